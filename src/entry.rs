//! The entries a sidecar publishes, as the command line names them: a Secrets Manager secret
//! (`NAME=SECRET_ID[?format=…&failover_region=…]`), an RDS IAM token to sign
//! (`NAME=rds-iam://USER@HOST:PORT`) and a `--template` (`NAME=PATH[?from=SECRET]`), with the one rule for
//! a NAME ([`valid_name`]) and for a Region name ([`valid_region`]), and where a secret's replica is
//! ([`Replica`]).
//!
//! A leaf: every other module may use these types, and this one uses nothing of the crate, so what an
//! entry *is* can be read, parsed and tested without the configuration, the store or AWS.

use std::path::PathBuf;
use std::str::FromStr;

/// How a secret's value is written and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `SecretString`, required to be a JSON object, written to `NAME.json`.
    Json,
    /// `SecretString` or `SecretBinary` bytes as they are, written to `NAME`.
    Raw,
    /// A JSON object rendered as a dotenv file, written to `NAME.env`.
    Env,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Raw => "raw",
            Format::Env => "env",
        }
    }
}

/// One `NAME=SECRET_ID[?format=json|raw|env&failover_region=REGION]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: String,
    pub secret_id: String,
    pub format: Format,
    /// Where the secret is read while its own Region fails: `failover_region=`, or `--failover-region`
    /// for an entry that names none (the configuration fills it in).
    pub replica: Option<Replica>,
}

/// A secret's replica: the copy Secrets Manager keeps in another Region (`ReplicateSecretToRegions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub region: String,
    /// What the replica is asked for there: a replica has its primary's name, and its ARN is the primary's
    /// with the Region replaced (AWS documentation, "Replicate secrets across Regions").
    pub secret_id: String,
}

impl Replica {
    /// The replica in `region` of the secret `secret_id` (a name or an ARN).
    pub fn of(secret_id: &str, region: &str) -> Result<Replica, SpecError> {
        if !valid_region(region) {
            return Err(SpecError::BadRegion(region.to_owned()));
        }
        if !secret_id.starts_with("arn:") {
            return Ok(Replica { region: region.to_owned(), secret_id: secret_id.to_owned() });
        }
        let own = arn_region(secret_id).ok_or_else(|| SpecError::ArnWithoutRegion(secret_id.to_owned()))?;
        if own == region {
            return Err(SpecError::FailoverToOwnRegion(region.to_owned()));
        }
        let mut fields: Vec<&str> = secret_id.splitn(7, ':').collect();
        fields[3] = region;
        Ok(Replica { region: region.to_owned(), secret_id: fields.join(":") })
    }
}

/// The Region a Secrets Manager ARN names — `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`
/// (a name has no `:`, so seven fields) — or `None` for a name or anything else. Secrets Manager answers
/// for a secret only in its own Region, so this is where a secret given by ARN is read.
pub fn arn_region(secret_id: &str) -> Option<&str> {
    let fields: Vec<&str> = secret_id.splitn(7, ':').collect();
    match fields.as_slice() {
        ["arn", _, "secretsmanager", region, _, "secret", _] if valid_region(region) => Some(region),
        _ => None,
    }
}

/// A Region's name as AWS writes them: `eu-west-1`, `us-gov-west-1`, `cn-north-1`.
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

impl SecretSpec {
    /// A secret without a replica, as `NAME=SECRET_ID` in `format` names it.
    pub fn new(name: impl Into<String>, secret_id: impl Into<String>, format: Format) -> SecretSpec {
        SecretSpec { name: name.into(), secret_id: secret_id.into(), format, replica: None }
    }

    /// The file name inside the output directory. Names are validated so this can never leave it.
    pub fn file_name(&self) -> String {
        match self.format {
            Format::Json => format!("{}.json", self.name),
            Format::Raw => self.name.clone(),
            Format::Env => format!("{}.env", self.name),
        }
    }
}

/// One `NAME=rds-iam://USER@HOST:PORT[?region=R&dbname=D]` entry: an RDS IAM auth token the sidecar
/// signs itself and publishes as `NAME.json`, in the shape of an RDS secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsIamSpec {
    pub name: String,
    /// The database user the token logs in as (`DBUser`).
    pub user: String,
    /// The endpoint the app dials (instance, cluster, custom or RDS Proxy): the token is signed for it.
    pub host: String,
    pub port: u16,
    /// The database's region when it differs from the SDK's.
    pub region: Option<String>,
    /// Passed through to the file as `dbname`.
    pub dbname: Option<String>,
}

impl RdsIamSpec {
    pub fn file_name(&self) -> String {
        format!("{}.json", self.name)
    }

    /// The entry as a reader recognises it, without its options: `rds-iam://USER@HOST:PORT`.
    pub fn target(&self) -> String {
        format!("{RDS_IAM_SCHEME}{}@{}:{}", self.user, self.host, self.port)
    }
}

/// One `--template NAME=PATH[?from=SECRET]` entry, before its file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    /// The file in the output directory, and the name in the store, HTTP and health.
    pub name: String,
    /// The template file, read once at start.
    pub path: PathBuf,
    /// The secret whose top-level keys are the template's variables.
    pub from: Option<String>,
}

impl FromStr for TemplateSpec {
    type Err = SpecError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        // The path ends at the first `?`, as a secret id does: a template path with a `?` is not supported.
        let (name, path, options) = split_entry(entry)?;
        if path.is_empty() {
            return Err(SpecError::EmptyTemplatePath);
        }
        let mut from = None;
        for opt in options.into_iter().flat_map(|o| o.split('&')) {
            match opt.split_once('=') {
                Some(("from", secret)) if valid_name(secret) => from = Some(secret.to_owned()),
                _ => return Err(SpecError::BadTemplateOption(opt.to_owned())),
            }
        }
        Ok(TemplateSpec { name: name.to_owned(), path: PathBuf::from(path), from })
    }
}

/// One `--secret` entry of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Secret(SecretSpec),
    RdsIam(RdsIamSpec),
}

/// The scheme that marks an IAM entry. `:` never occurs in a Secrets Manager secret name, and an ARN
/// starts with `arn:`, so the two kinds cannot be confused.
pub const RDS_IAM_SCHEME: &str = "rds-iam://";

impl FromStr for Entry {
    type Err = SpecError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let trimmed = entry.trim();
        match trimmed.split_once('=') {
            Some((name, rest)) if rest.starts_with(RDS_IAM_SCHEME) => {
                if !valid_name(name) {
                    return Err(SpecError::BadName(name.to_owned()));
                }
                parse_rds_iam(name, &rest[RDS_IAM_SCHEME.len()..]).map(Entry::RdsIam)
            }
            _ => trimmed.parse().map(Entry::Secret),
        }
    }
}

/// `USER@HOST:PORT[?region=R&dbname=D]`. The user and dbname may be percent-encoded (a user with `@`).
fn parse_rds_iam(name: &str, s: &str) -> Result<RdsIamSpec, SpecError> {
    let bad = |why: &str| SpecError::BadRdsIam(format!("{RDS_IAM_SCHEME}{s}: {why}"));
    let (authority, options) = match s.split_once('?') {
        Some((a, o)) => (a, Some(o)),
        None => (s, None),
    };
    let (user, host_port) = authority.rsplit_once('@').ok_or_else(|| bad("expected USER@HOST:PORT"))?;
    let user = decode(user).ok_or_else(|| bad("the user is not valid percent-encoded UTF-8"))?;
    if user.is_empty() || user.len() > 63 || user.chars().any(char::is_control) {
        return Err(bad("the user must be 1 to 63 printable characters"));
    }
    let (host, port) = host_port.rsplit_once(':').ok_or_else(|| bad("expected HOST:PORT (the port is required)"))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !host_ok {
        return Err(bad("the host must be a DNS name or IPv4 address"));
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be 1 to 65535"))?;
    let (mut region, mut dbname) = (None, None);
    for opt in options.into_iter().flat_map(|o| o.split('&')) {
        match opt.split_once('=') {
            Some(("region", r)) if valid_region(r) => region = Some(r.to_owned()),
            Some(("dbname", d)) => {
                let d = decode(d).filter(|d| !d.is_empty() && !d.chars().any(char::is_control));
                dbname = Some(d.ok_or_else(|| bad("dbname must be a non-empty, printable name"))?);
            }
            Some(("failover_region", _)) => return Err(SpecError::FailoverForRdsIam),
            _ => return Err(SpecError::BadIamOption(opt.to_owned())),
        }
    }
    Ok(RdsIamSpec { name: name.to_owned(), user, host: host.to_ascii_lowercase(), port, region, dbname })
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("empty entry (a stray comma in SIDECAR_SECRETS?)")]
    Empty,
    #[error("{0:?} is not NAME=SECRET_ID")]
    NoEquals(String),
    #[error("name {0:?} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")]
    BadName(String),
    #[error("secret id {0:?} is not a Secrets Manager name or ARN")]
    BadSecretId(String),
    #[error("{0}")]
    BadRdsIam(String),
    #[error("unknown option {0:?} (a secret takes format=json|raw|env and failover_region=REGION)")]
    BadOption(String),
    #[error("{0:?} is not a Region name (like eu-west-1)")]
    BadRegion(String),
    #[error(
        "secret id {0:?} starts like an ARN but is not arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME, \
             so its replica's ARN cannot be made from it"
    )]
    ArnWithoutRegion(String),
    #[error("the failover Region {0} is the secret's own Region")]
    FailoverToOwnRegion(String),
    #[error(
        "failover_region does not apply to rds-iam:// entries: a token is signed locally, and no Region's \
             service is called that a replica could stand in for"
    )]
    FailoverForRdsIam,
    #[error("unknown option {0:?} (rds-iam:// entries take region=REGION and dbname=NAME)")]
    BadIamOption(String),
    #[error("the template path is empty (expected NAME=PATH[?from=SECRET])")]
    EmptyTemplatePath,
    #[error("unknown option {0:?} (a template takes from=SECRET, a secret's NAME)")]
    BadTemplateOption(String),
}

impl FromStr for SecretSpec {
    type Err = SpecError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let (name, secret_id, options) = split_entry(entry)?;
        if !valid_secret_id(secret_id) {
            return Err(SpecError::BadSecretId(secret_id.to_owned()));
        }
        let mut format = Format::Json;
        let mut replica = None;
        for opt in options.into_iter().flat_map(|o| o.split('&')) {
            match opt.split_once('=') {
                Some(("format", "json")) => format = Format::Json,
                Some(("format", "raw")) => format = Format::Raw,
                Some(("format", "env")) => format = Format::Env,
                Some(("failover_region", region)) => replica = Some(Replica::of(secret_id, region)?),
                _ => return Err(SpecError::BadOption(opt.to_owned())),
            }
        }
        Ok(SecretSpec { name: name.to_owned(), secret_id: secret_id.to_owned(), format, replica })
    }
}

/// `NAME=VALUE[?OPTIONS]`, the shape of `--secret` and `--template` entries, with NAME checked. `?` never
/// occurs in a secret name or ARN, so it can introduce options unambiguously, and `,` stays free for the
/// list separator of the environment variables.
fn split_entry(entry: &str) -> Result<(&str, &str, Option<&str>), SpecError> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(SpecError::Empty);
    }
    let (name, rest) = entry.split_once('=').ok_or_else(|| SpecError::NoEquals(entry.to_owned()))?;
    if !valid_name(name) {
        return Err(SpecError::BadName(name.to_owned()));
    }
    Ok(match rest.split_once('?') {
        Some((value, options)) => (name, value, Some(options)),
        None => (name, rest, None),
    })
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: safe as a file name and a URL path segment, and never `.`/`..`
/// or a dot-file (the first character is alphanumeric), so it cannot collide with `.token` or temp files.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Secret names allow `A-Za-z0-9/_+=.@-`; RDS-owned ones add `!` (`rds!cluster-…`); ARNs add `:`.
/// Names are at most 512 characters; an ARN adds at most a few hundred more.
fn valid_secret_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 2048 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-!:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_accepts_rds_names_paths_and_arns() {
        for (entry, id) in [
            ("db=rds!cluster-1b2c3d4e-aaaa", "rds!cluster-1b2c3d4e-aaaa"),
            ("app.cfg=prod/app/db", "prod/app/db"),
            (
                "db=arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-abc-Zx9Y1a",
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-abc-Zx9Y1a",
            ),
        ] {
            let spec: SecretSpec = entry.parse().unwrap();
            assert_eq!(spec.secret_id, id);
            assert_eq!(spec.format, Format::Json);
        }
    }

    #[test]
    fn spec_format_option_selects_raw_file_name() {
        let spec: SecretSpec = "cert=prod/tls?format=raw".parse().unwrap();
        assert_eq!((spec.format, spec.file_name().as_str()), (Format::Raw, "cert"));
        let spec: SecretSpec = "db=prod/db?format=json".parse().unwrap();
        assert_eq!(spec.file_name(), "db.json");
        let spec: SecretSpec = "app=prod/app?format=env".parse().unwrap();
        assert_eq!((spec.format, spec.file_name().as_str()), (Format::Env, "app.env"));
    }

    #[test]
    fn spec_rejects_malformed_entries_with_the_offending_part() {
        assert_eq!("".parse::<SecretSpec>(), Err(SpecError::Empty));
        assert_eq!("db".parse::<SecretSpec>(), Err(SpecError::NoEquals("db".into())));
        assert_eq!("../x=a".parse::<SecretSpec>(), Err(SpecError::BadName("../x".into())));
        assert_eq!(".token=a".parse::<SecretSpec>(), Err(SpecError::BadName(".token".into())));
        assert_eq!("db=".parse::<SecretSpec>(), Err(SpecError::BadSecretId("".into())));
        assert_eq!("db=a b".parse::<SecretSpec>(), Err(SpecError::BadSecretId("a b".into())));
        assert_eq!("db=a?fmt=raw".parse::<SecretSpec>(), Err(SpecError::BadOption("fmt=raw".into())));
    }

    #[test]
    fn failover_region_names_the_replica_by_name_or_by_the_arn_with_its_region_replaced() {
        let spec: SecretSpec = "db=prod/db?failover_region=us-west-2&format=env".parse().unwrap();
        assert_eq!(spec.format, Format::Env);
        assert_eq!(spec.replica, Some(Replica { region: "us-west-2".into(), secret_id: "prod/db".into() }));
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-abc-Zx9Y1a";
        let spec: SecretSpec = format!("db={arn}?failover_region=eu-central-1").parse().unwrap();
        assert_eq!(
            spec.replica.unwrap().secret_id,
            "arn:aws:secretsmanager:eu-central-1:123456789012:secret:rds!cluster-abc-Zx9Y1a"
        );
        // The partition stays: a GovCloud secret's replica is in GovCloud.
        let gov = Replica::of("arn:aws-us-gov:secretsmanager:us-gov-west-1:1:secret:x-AbCdEf", "us-gov-east-1");
        assert_eq!(gov.unwrap().secret_id, "arn:aws-us-gov:secretsmanager:us-gov-east-1:1:secret:x-AbCdEf");
        assert_eq!("db=prod/db".parse::<SecretSpec>().unwrap().replica, None);
    }

    #[test]
    fn an_arn_names_the_region_the_secret_is_read_in_and_a_name_names_none() {
        assert_eq!(
            arn_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-a-Zx9Y1a"),
            Some("eu-west-1")
        );
        assert_eq!(arn_region("arn:aws-cn:secretsmanager:cn-north-1:1:secret:x"), Some("cn-north-1"));
        for none in [
            "prod/db",
            "rds!cluster-a",
            "arn:aws:s3:::bucket",
            "arn:aws:secretsmanager:EU:1:secret:x",
            "arn:aws:secretsmanager:eu-west-1:1:x",
        ] {
            assert_eq!(arn_region(none), None, "{none}");
        }
    }

    #[test]
    fn a_failover_region_that_cannot_be_used_is_refused_with_the_reason() {
        for (entry, err) in [
            ("db=x?failover_region=US_WEST", SpecError::BadRegion("US_WEST".into())),
            ("db=x?failover_region=", SpecError::BadRegion("".into())),
            (
                "db=arn:aws:secretsmanager:eu-west-1:1:secret:x?failover_region=eu-west-1",
                SpecError::FailoverToOwnRegion("eu-west-1".into()),
            ),
            (
                "db=arn:aws:s3:::bucket?failover_region=eu-west-1",
                SpecError::ArnWithoutRegion("arn:aws:s3:::bucket".into()),
            ),
            ("db=x?failover=us-west-2", SpecError::BadOption("failover=us-west-2".into())),
        ] {
            assert_eq!(entry.parse::<SecretSpec>(), Err(err), "{entry}");
        }
        let err = "db=rds-iam://app@db.internal:3306?failover_region=us-west-2".parse::<Entry>().unwrap_err();
        assert_eq!(err, SpecError::FailoverForRdsIam);
        assert!(err.to_string().contains("a token is signed locally"), "{err}");
    }

    #[test]
    fn rds_iam_entries_parse_user_host_port_and_options() {
        let e: Entry = "db=rds-iam://app@app.cluster-c9akciq32.eu-west-1.rds.amazonaws.com:3306".parse().unwrap();
        assert_eq!(
            e,
            Entry::RdsIam(RdsIamSpec {
                name: "db".into(),
                user: "app".into(),
                host: "app.cluster-c9akciq32.eu-west-1.rds.amazonaws.com".into(),
                port: 3306,
                region: None,
                dbname: None,
            })
        );
        let e: Entry =
            "db=rds-iam://svc%40x@Proxy.example.internal:5432?region=us-west-2&dbname=app%20db".parse().unwrap();
        let Entry::RdsIam(spec) = e else { panic!("not an IAM entry") };
        assert_eq!((spec.user.as_str(), spec.host.as_str()), ("svc@x", "proxy.example.internal"));
        assert_eq!((spec.region.as_deref(), spec.dbname.as_deref()), (Some("us-west-2"), Some("app db")));
        assert_eq!(spec.file_name(), "db.json");
        // Everything else is a Secrets Manager entry, ARNs included.
        let e: Entry = "db=arn:aws:secretsmanager:eu-west-1:123456789012:secret:x".parse().unwrap();
        assert!(matches!(e, Entry::Secret(_)));
    }

    #[test]
    fn malformed_rds_iam_entries_name_what_is_wrong() {
        for (entry, phrase) in [
            ("db=rds-iam://db.internal:3306", "expected USER@HOST:PORT"),
            ("db=rds-iam://app@db.internal", "the port is required"),
            ("db=rds-iam://app@db.internal:0", "1 to 65535"),
            ("db=rds-iam://app@db.internal:99999", "1 to 65535"),
            ("db=rds-iam://app@db_internal:3306", "DNS name"),
            ("db=rds-iam://app@[::1]:3306", "DNS name"),
            ("db=rds-iam://@db.internal:3306", "1 to 63 printable"),
            ("db=rds-iam://app@db.internal:3306?region=EU_WEST", "region=EU_WEST"),
            ("db=rds-iam://app@db.internal:3306?format=raw", "format=raw"),
        ] {
            let err = entry.parse::<Entry>().unwrap_err().to_string();
            assert!(err.contains(phrase), "{entry}: {err}");
        }
        assert_eq!("../x=rds-iam://a@b:1".parse::<Entry>(), Err(SpecError::BadName("../x".into())));
    }

    #[test]
    fn template_entries_parse_name_path_and_from() {
        assert_eq!(
            "db_url=/etc/sidecar/db_url.j2?from=db".parse::<TemplateSpec>(),
            Ok(TemplateSpec { name: "db_url".into(), path: "/etc/sidecar/db_url.j2".into(), from: Some("db".into()) })
        );
        assert_eq!(
            "app.env=t/app.env.j2".parse::<TemplateSpec>(),
            Ok(TemplateSpec { name: "app.env".into(), path: "t/app.env.j2".into(), from: None })
        );
        assert_eq!("../x=a".parse::<TemplateSpec>(), Err(SpecError::BadName("../x".into())));
        assert_eq!("x=".parse::<TemplateSpec>(), Err(SpecError::EmptyTemplatePath));
        assert_eq!("x=a?from=../db".parse::<TemplateSpec>(), Err(SpecError::BadTemplateOption("from=../db".into())));
        assert_eq!("x=a?format=raw".parse::<TemplateSpec>(), Err(SpecError::BadTemplateOption("format=raw".into())));
    }

    proptest! {
        /// Any accepted name stays inside the output directory and is neither a dot-file nor a path.
        #[test]
        fn accepted_names_are_plain_file_names(name in "\\PC{0,70}") {
            if valid_name(&name) {
                prop_assert!(!name.contains('/'));
                prop_assert!(!name.starts_with('.'));
                prop_assert!(name != "..");
                let spec = SecretSpec::new(name.clone(), "x", Format::Json);
                let path = std::path::Path::new("/out").join(spec.file_name());
                prop_assert_eq!(path.parent(), Some(std::path::Path::new("/out")));
            }
        }

        /// Parsing a well-formed entry gives back exactly its parts.
        #[test]
        fn well_formed_entries_round_trip(
            name in "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
            id in "[A-Za-z0-9/_+=.@!:-]{1,100}",
            format in prop::sample::select(vec![None, Some(Format::Json), Some(Format::Raw), Some(Format::Env)]),
        ) {
            let entry = match format {
                Some(f) => format!("{name}={id}?format={}", f.as_str()),
                None => format!("{name}={id}"),
            };
            let spec: SecretSpec = entry.parse().unwrap();
            prop_assert_eq!(spec.name, name);
            prop_assert_eq!(spec.secret_id, id);
            prop_assert_eq!(spec.format, format.unwrap_or(Format::Json));
        }
    }
}
