//! Configuration: the command line, its `SIDECAR_*` environment variables, and the checks that turn them
//! into a [`Config`] before anything touches AWS or the disk.
//!
//! Every flag has an environment variable because ECS task definitions pass configuration as
//! `environment`, and the image has no shell to build a command line with. Everything that can be wrong
//! with the configuration is found here, so a bad task definition fails at start with exit code 2 and a
//! message naming the offending value, not minutes later inside a poll loop.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::secret::SecretString;
use crate::template::{Template, TemplateError};

/// Default `--listen`: the port the AWS Secrets Manager Agent uses, so a task migrating from it keeps its URL.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2773";
/// The shortest `--refresh-interval` accepted; below it a fleet would spend real money on API calls.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps AWS Secrets Manager secrets current in files on a shared volume and on a localhost endpoint.
#[derive(Debug, Parser)]
#[command(name = "secrets-sidecar", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the daemon (the default when no subcommand is given).
    Run,
    /// Probe /healthz on --listen; exit 0 when healthy, 1 otherwise (for the ECS healthCheck).
    Healthcheck,
    /// Validate the configuration exactly as `run` would, print it, and exit without calling AWS.
    CheckConfig,
}

/// The settings shared by every subcommand. All are `global` so they may stand before or after the
/// subcommand, and none is `required` in clap's sense: `healthcheck` needs only `--listen`, and the
/// checks for `run` live in [`Settings::validate`] where they can name the offending value.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// A secret to keep current: NAME=SECRET_ID[?format=json|raw|env], or an RDS IAM auth token to mint:
    /// NAME=rds-iam://USER@HOST:PORT[?region=R&dbname=D]. Repeatable; the env var takes a comma-separated
    /// list. NAME names the file and the URL; SECRET_ID is a secret name or ARN. Formats: json (the
    /// default) writes the SecretString, a JSON object, to NAME.json; raw the bytes as they are to NAME;
    /// env the object as a dotenv file to NAME.env. For a URL or config file built from secrets, see
    /// --template.
    #[arg(
        long = "secret",
        env = "SIDECAR_SECRETS",
        value_delimiter = ',',
        global = true,
        value_name = "NAME=SECRET_ID"
    )]
    pub secrets: Vec<String>,

    /// A file rendered from a template: NAME=PATH[?from=SECRET]. Repeatable; the env var takes a
    /// comma-separated list. The template at PATH (minijinja, i.e. Jinja2 syntax; read at start) is rendered
    /// into DIR/NAME whenever a secret it uses changes, e.g.
    /// DATABASE_URL=mysql2://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ dbname }}
    /// with ?from=db. Each secret it names is a variable (a JSON secret an object, a raw one a string), all
    /// are in secrets["NAME"], and with from=SECRET that secret's keys are the variables. A missing key
    /// fails the render and keeps the last good file. Filters: urlencode (any string, safe in a URL's user
    /// or password), tojson.
    #[arg(
        long = "template",
        env = "SIDECAR_TEMPLATES",
        value_delimiter = ',',
        global = true,
        value_name = "NAME=PATH[?from=SECRET]"
    )]
    pub templates: Vec<String>,

    /// Directory the secret files are written to (a volume shared with the app container).
    #[arg(long, env = "SIDECAR_OUTPUT_DIR", default_value = "/secrets", global = true)]
    pub output_dir: PathBuf,

    /// How often each secret is checked (±10% jitter per secret).
    #[arg(long, env = "SIDECAR_REFRESH_INTERVAL", default_value = "60s", value_parser = parse_duration,
          global = true)]
    pub refresh_interval: Duration,

    /// How often a secret is checked while a rotation is under way (AWSPENDING on another version).
    #[arg(long, env = "SIDECAR_ROTATION_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration,
          global = true)]
    pub rotation_poll_interval: Duration,

    /// The shortest time between two fetches forced through POST /v1/secrets/NAME/refresh.
    #[arg(long, env = "SIDECAR_MIN_REFRESH_GAP", default_value = "5s", value_parser = parse_duration,
          global = true)]
    pub min_refresh_gap: Duration,

    /// How often an rds-iam:// token is signed anew (tokens live 15 minutes; the margin covers clock skew
    /// and a failed renewal's retries). Never later than its signing credentials expire.
    #[arg(long, env = "SIDECAR_RDS_IAM_RENEW_INTERVAL", default_value = "10m", value_parser = parse_duration,
          global = true)]
    pub rds_iam_renew_interval: Duration,

    /// Address of the HTTP endpoint. Only loopback addresses unless --allow-non-loopback.
    #[arg(long, env = "SIDECAR_LISTEN", default_value = DEFAULT_LISTEN, global = true)]
    pub listen: SocketAddr,

    /// Allow --listen on a non-loopback address (the endpoint then serves secrets to the network).
    #[arg(long, env = "SIDECAR_ALLOW_NON_LOOPBACK", global = true)]
    pub allow_non_loopback: bool,

    /// Mode of the files written, in octal.
    #[arg(long, env = "SIDECAR_FILE_MODE", default_value = "0440", value_parser = parse_mode, global = true)]
    pub file_mode: u32,

    /// Owner uid of the files written [default: the process's own].
    #[arg(long, env = "SIDECAR_FILE_UID", global = true)]
    pub file_uid: Option<u32>,

    /// Owner gid of the files written [default: the process's own].
    #[arg(long, env = "SIDECAR_FILE_GID", global = true)]
    pub file_gid: Option<u32>,

    /// Secrets Manager endpoint [default: the SDK's, which honours AWS_ENDPOINT_URL_SECRETS_MANAGER].
    #[arg(long, env = "SIDECAR_ENDPOINT_URL", global = true)]
    pub endpoint_url: Option<String>,

    /// Log format on stdout: one JSON object per line (for CloudWatch), or text.
    #[arg(long, env = "SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,

    /// Token required in X-Secrets-Sidecar-Token [default: 32 random bytes, written to DIR/.token].
    #[arg(long, env = "SIDECAR_TOKEN", hide_env_values = true, global = true, conflicts_with = "no_token",
          value_parser = parse_secret)]
    pub token: Option<SecretString>,

    /// Serve /v1/ without a token. For local experiments only.
    #[arg(long, env = "SIDECAR_NO_TOKEN", global = true)]
    pub no_token: bool,

    /// Report unhealthy when a secret has not been refreshed successfully for this long [default: never].
    #[arg(long, env = "SIDECAR_MAX_STALENESS", value_parser = parse_duration, global = true)]
    pub max_staleness: Option<Duration>,

    /// Local development: read secrets from this JSON file ({NAME: value}) instead of Secrets Manager,
    /// and publish every edit.
    #[arg(long, env = "SIDECAR_DEV_SECRETS", global = true)]
    pub dev_secrets: Option<PathBuf>,

    /// An action fired once after a change of the named files is in place: 'WATCH=ACTION', WATCH one
    /// secret or template name or several joined by '+', ACTION 'http METHOD URL [token-file=PATH] [token-param=NAME]' (a
    /// loopback http:// URL) or 'signal SIG pidfile=PATH|process=NAME', plus [timeout=10s] [debounce=5s]
    /// [initial=true]. Repeatable; the env var takes a ';'-separated list.
    #[arg(long = "on-change", env = "SIDECAR_ON_CHANGE", value_delimiter = ';', global = true,
          value_name = "WATCH=ACTION", value_parser = parse_on_change_arg, hide_env_values = true)]
    pub on_change: Vec<OnChangeArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// How a secret's value is written and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `SecretString`, required to be a JSON object, written to `NAME.json`.
    Json,
    /// `SecretString` or `SecretBinary` bytes as they are, written to `NAME`.
    Raw,
    /// A JSON object rendered as a dotenv file ([`crate::dotenv`]), written to `NAME.env`.
    Env,
    /// A `--template` rendered from one or more secrets ([`crate::template`]), written to `NAME`.
    Template,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Raw => "raw",
            Format::Env => "env",
            Format::Template => "template",
        }
    }
}

/// One `NAME=SECRET_ID[?format=json|raw|env]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: String,
    pub secret_id: String,
    pub format: Format,
}

impl SecretSpec {
    /// The file name inside the output directory. Names are validated so this can never leave it.
    pub fn file_name(&self) -> String {
        match self.format {
            Format::Json => format!("{}.json", self.name),
            Format::Raw | Format::Template => self.name.clone(),
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
            Some(("region", r))
                if !r.is_empty()
                    && r.len() <= 32
                    && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
            {
                region = Some(r.to_owned())
            }
            Some(("dbname", d)) => {
                let d = decode(d).filter(|d| !d.is_empty() && !d.chars().any(char::is_control));
                dbname = Some(d.ok_or_else(|| bad("dbname must be a non-empty, printable name"))?);
            }
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
    #[error("unknown option {0:?} (the only option is format=json|raw|env)")]
    BadOption(String),
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
        for opt in options.into_iter().flat_map(|o| o.split('&')) {
            format = match opt {
                "format=json" => Format::Json,
                "format=raw" => Format::Raw,
                "format=env" => Format::Env,
                other => return Err(SpecError::BadOption(other.to_owned())),
            };
        }
        Ok(SecretSpec { name: name.to_owned(), secret_id: secret_id.to_owned(), format })
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 60s, 5m, 1h30m)"))
}

/// Wraps the token as soon as clap has it, so not even `Debug` of the parsed command line shows it.
fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err("expected an octal file mode such as 0440".to_owned()),
    }
}

/// What the token check does.
#[derive(Clone)]
pub enum TokenSetting {
    /// A token given with --token / SIDECAR_TOKEN.
    Given(SecretString),
    /// Generate one at start and publish it to DIR/.token.
    Generate,
    /// --no-token.
    Disabled,
}

impl fmt::Debug for TokenSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSetting::Given(_) => f.write_str("Given(<redacted>)"),
            TokenSetting::Generate => f.write_str("Generate"),
            TokenSetting::Disabled => f.write_str("Disabled"),
        }
    }
}

/// Where values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// Secrets Manager through the SDK's default chains; `endpoint_url` overrides the endpoint.
    Aws { endpoint_url: Option<String> },
    /// A local JSON file standing in for Secrets Manager (`--dev-secrets`).
    Dev { path: PathBuf },
}

/// Owner and mode of every file written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A validated configuration for `run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub secrets: Vec<SecretSpec>,
    /// `rds-iam://` entries: tokens signed locally, published like secrets.
    pub rds_iam: Vec<RdsIamSpec>,
    /// `--template` entries, read and compiled.
    pub templates: Vec<Arc<Template>>,
    pub rds_iam_renew_interval: Duration,
    pub output_dir: PathBuf,
    pub refresh_interval: Duration,
    pub rotation_poll_interval: Duration,
    pub min_refresh_gap: Duration,
    pub listen: SocketAddr,
    pub file: FileOptions,
    pub token: TokenSetting,
    pub max_staleness: Option<Duration>,
    pub source: SourceConfig,
    /// `--on-change` actions, in the order given (their index is their label in logs and metrics).
    pub on_change: Vec<OnChange>,
}

impl Config {
    /// Every name that is published and can be watched by an on-change action.
    pub fn published_names(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.rds_iam.iter().map(|s| s.name.as_str()))
            .chain(self.templates.iter().map(|t| t.spec.name.as_str()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no secrets configured: give --secret NAME=SECRET_ID or SIDECAR_SECRETS")]
    NoSecrets,
    #[error("invalid secret {entry:?}: {source}")]
    Spec { entry: String, source: SpecError },
    #[error("secret name {0:?} is given twice")]
    DuplicateName(String),
    #[error("invalid template {entry:?}: {source}")]
    TemplateSpec { entry: String, source: SpecError },
    #[error("template name {0:?} is already the name of a secret or another template")]
    DuplicateTemplate(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("rds-iam:// entries sign tokens with AWS credentials and cannot be used with --dev-secrets")]
    RdsIamWithDev,
    #[error("--rds-iam-renew-interval must be between 1s and 14m (a token lives 15 minutes), got {}",
            humantime::format_duration(*.0))]
    RenewInterval(Duration),
    #[error("--listen {0} is not a loopback address; add --allow-non-loopback to serve secrets to the network")]
    NonLoopback(SocketAddr),
    #[error("--{flag} must be at least {min}, got {value}", min = humantime::format_duration(*.min),
            value = humantime::format_duration(*.value))]
    TooShort { flag: &'static str, value: Duration, min: Duration },
    #[error("--token is empty")]
    EmptyToken,
    #[error("--endpoint-url {0:?} must start with http:// or https://")]
    BadEndpoint(String),
    #[error("--output-dir must not be empty")]
    EmptyOutputDir,
    #[error("invalid --on-change {entry:?}: {source}")]
    OnChange { entry: String, source: OnChangeError },
}

impl Settings {
    /// Turns the raw settings into a [`Config`] or the first thing wrong with them.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut secrets = Vec::with_capacity(self.secrets.len());
        let mut rds_iam = Vec::new();
        let mut seen = HashSet::new();
        for entry in &self.secrets {
            let parsed: Entry = entry.parse().map_err(|source| ConfigError::Spec { entry: entry.clone(), source })?;
            let name = match &parsed {
                Entry::Secret(s) => &s.name,
                Entry::RdsIam(s) => &s.name,
            };
            if !seen.insert(name.clone()) {
                return Err(ConfigError::DuplicateName(name.clone()));
            }
            match parsed {
                Entry::Secret(s) => secrets.push(s),
                Entry::RdsIam(s) => rds_iam.push(s),
            }
        }
        // A dev run without --secret serves every key of the dev file.
        if secrets.is_empty() && rds_iam.is_empty() && self.dev_secrets.is_none() {
            return Err(ConfigError::NoSecrets);
        }
        if !rds_iam.is_empty() && self.dev_secrets.is_some() {
            return Err(ConfigError::RdsIamWithDev);
        }
        // Templates are read and compiled here, so a syntax error or a variable that names no secret exits
        // with 2 before anything is fetched. A dev run without --secret learns its names from the dev file:
        // `run` checks the variables against those.
        let known: Option<Vec<String>> = (self.dev_secrets.is_none() || !seen.is_empty())
            .then(|| secrets.iter().map(|s| s.name.clone()).chain(rds_iam.iter().map(|s| s.name.clone())).collect());
        let mut templates = Vec::with_capacity(self.templates.len());
        for entry in &self.templates {
            let spec: TemplateSpec =
                entry.parse().map_err(|source| ConfigError::TemplateSpec { entry: entry.clone(), source })?;
            if !seen.insert(spec.name.clone()) {
                return Err(ConfigError::DuplicateTemplate(spec.name));
            }
            let template = Template::load(spec)?;
            if let Some(known) = &known {
                template.inputs(known)?;
            }
            templates.push(Arc::new(template));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(14 * 60)).contains(&self.rds_iam_renew_interval) {
            return Err(ConfigError::RenewInterval(self.rds_iam_renew_interval));
        }
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
            return Err(ConfigError::NonLoopback(self.listen));
        }
        for (flag, value, min) in [
            ("refresh-interval", self.refresh_interval, MIN_REFRESH_INTERVAL),
            ("rotation-poll-interval", self.rotation_poll_interval, Duration::from_millis(100)),
        ] {
            if value < min {
                return Err(ConfigError::TooShort { flag, value, min });
            }
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(ConfigError::EmptyOutputDir);
        }
        let token = match (&self.token, self.no_token) {
            (_, true) => TokenSetting::Disabled,
            (Some(t), false) if t.expose().is_empty() => return Err(ConfigError::EmptyToken),
            (Some(t), false) => TokenSetting::Given(t.clone()),
            (None, false) => TokenSetting::Generate,
        };
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::BadEndpoint(url.clone()));
        }
        let source = match &self.dev_secrets {
            Some(path) => SourceConfig::Dev { path: path.clone() },
            None => SourceConfig::Aws { endpoint_url: self.endpoint_url.clone() },
        };
        let mut config = Config {
            on_change: Vec::with_capacity(self.on_change.len()),
            secrets,
            rds_iam,
            templates,
            rds_iam_renew_interval: self.rds_iam_renew_interval,
            output_dir: self.output_dir.clone(),
            refresh_interval: self.refresh_interval,
            rotation_poll_interval: self.rotation_poll_interval,
            min_refresh_gap: self.min_refresh_gap,
            listen: self.listen,
            file: FileOptions { mode: self.file_mode, uid: self.file_uid, gid: self.file_gid },
            token,
            max_staleness: self.max_staleness,
            source,
        };
        let watchable: HashSet<&str> = config.published_names().collect();
        // A dev run without --secret learns its names from the file at start; `run` checks those.
        let names_known = !config.secrets.is_empty() || !matches!(config.source, SourceConfig::Dev { .. });
        let mut on_change = Vec::with_capacity(self.on_change.len());
        for arg in &self.on_change {
            let entry = &arg.0;
            let err = |source| ConfigError::OnChange { entry: redact_queries(entry), source };
            let parsed: OnChange = entry.parse().map_err(err)?;
            if names_known && let Some(unknown) = parsed.watch.iter().find(|n| !watchable.contains(n.as_str())) {
                return Err(err(OnChangeError::UnknownName(unknown.clone())));
            }
            on_change.push(parsed);
        }
        config.on_change = on_change;
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------------
// --on-change

/// An on-change action's `timeout=` when none is given: bounds connect and response of an HTTP action.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// An on-change action's `debounce=` when none is given: the quiet time after the last change before it
/// fires, so several secrets rotated together cause one restart.
pub const DEFAULT_ACTION_DEBOUNCE: Duration = Duration::from_secs(5);
/// The query parameter an HTTP action's token goes in when `token-param=` is not given: the one Puma's
/// control app reads.
pub const DEFAULT_TOKEN_PARAM: &str = "token";

/// One `--on-change 'WATCH=ACTION'` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnChange {
    /// The published names whose changes fire the action (one or more, `+`-joined on the command line).
    pub watch: Vec<String>,
    pub action: Action,
    pub timeout: Duration,
    pub debounce: Duration,
    /// Also fire after the initial publish at start.
    pub initial: bool,
}

/// What an on-change action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A request to a loopback URL, e.g. Puma's control app.
    Http(HttpAction),
    /// A signal to a process of the task (`pidMode: task`).
    Signal { signal: SignalName, target: SignalTarget },
}

/// `http METHOD URL [token-file=PATH] [token-param=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAction {
    pub method: String,
    /// As written in the URL: `127.0.0.1`, `[::1]`, `localhost`.
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The URL's own query, if any. Redacted in `Debug` and never logged: it may hold a credential.
    pub query: Option<SecretString>,
    /// A file whose trimmed content is sent as the query parameter `token_param`, read at each firing.
    pub token_file: Option<PathBuf>,
    pub token_param: String,
}

impl HttpAction {
    /// `http://host:port/path`: what logs show of the URL (never its query).
    pub fn display_url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A signal an action may send. The names are the ones an app server acts on (Puma: USR1 phased restart,
/// USR2 restart, HUP reopen logs, TERM stop…); the number comes from the platform at send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalName {
    Hup,
    Int,
    Quit,
    Term,
    Usr1,
    Usr2,
    Winch,
    Ttin,
    Ttou,
    Cont,
}

impl SignalName {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Hup => "HUP",
            SignalName::Int => "INT",
            SignalName::Quit => "QUIT",
            SignalName::Term => "TERM",
            SignalName::Usr1 => "USR1",
            SignalName::Usr2 => "USR2",
            SignalName::Winch => "WINCH",
            SignalName::Ttin => "TTIN",
            SignalName::Ttou => "TTOU",
            SignalName::Cont => "CONT",
        }
    }
}

impl FromStr for SignalName {
    type Err = OnChangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix("SIG").unwrap_or(s);
        Ok(match name {
            "HUP" => SignalName::Hup,
            "INT" => SignalName::Int,
            "QUIT" => SignalName::Quit,
            "TERM" => SignalName::Term,
            "USR1" => SignalName::Usr1,
            "USR2" => SignalName::Usr2,
            "WINCH" => SignalName::Winch,
            "TTIN" => SignalName::Ttin,
            "TTOU" => SignalName::Ttou,
            "CONT" => SignalName::Cont,
            _ => return Err(OnChangeError::BadSignal(s.to_owned())),
        })
    }
}

/// Which process a signal action reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The pid in this file, read at each firing (Puma's `pidfile`).
    PidFile(PathBuf),
    /// Every process whose `/proc/PID/comm` or `argv[0]` file name is this.
    Process(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnChangeError {
    #[error(
        "expected WATCH=ACTION, e.g. 'app=http POST http://127.0.0.1:9293/phased-restart token-file=/secrets/puma.token'"
    )]
    NoEquals,
    #[error("watched name {0:?} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")]
    BadName(String),
    #[error("watched name {0:?} is not a configured secret")]
    UnknownName(String),
    #[error("unknown action {0:?} (expected http or signal)")]
    UnknownAction(String),
    #[error("an http action needs METHOD and URL: http METHOD URL [token-file=PATH] [token-param=NAME]")]
    HttpArgs,
    #[error("method {0:?} is not an upper-case HTTP method such as GET or POST")]
    BadMethod(String),
    #[error("URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    #[error("a signal action needs SIG and a target: signal SIG pidfile=PATH|process=NAME")]
    SignalArgs,
    #[error("signal {0:?} is not one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH, TTIN, TTOU, CONT")]
    BadSignal(String),
    #[error("process name {0:?} must be 1 to 255 characters without '/'")]
    BadProcess(String),
    #[error("unknown or misplaced option {0:?}")]
    BadOption(String),
    #[error("option {0:?} is given twice")]
    DuplicateOption(String),
    #[error("{0:?}: {1}")]
    BadValue(String, String),
}

impl FromStr for OnChange {
    type Err = OnChangeError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let (watch, action) = entry.trim().split_once('=').ok_or(OnChangeError::NoEquals)?;
        let mut names = Vec::new();
        for name in watch.trim().split('+') {
            if !valid_name(name) {
                return Err(OnChangeError::BadName(name.to_owned()));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        let mut words = action.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let mut positional = Vec::new();
        let mut options: Vec<(&str, &str)> = Vec::new();
        for word in words {
            match word.split_once('=') {
                // A URL's query has `=` too, but a URL is never an option name.
                Some((k, v)) if !k.contains(':') && !k.contains('/') => {
                    if options.iter().any(|(seen, _)| *seen == k) {
                        return Err(OnChangeError::DuplicateOption(k.to_owned()));
                    }
                    options.push((k, v));
                }
                _ => positional.push(word),
            }
        }
        let mut take = |key: &str| options.iter().position(|(k, _)| *k == key).map(|i| options.remove(i).1);
        let duration = |word: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| OnChangeError::BadValue(word.to_owned(), e.to_string()))
        };
        let timeout = match take("timeout") {
            Some(v) => {
                let t = duration(&format!("timeout={v}"), v)?;
                if t.is_zero() {
                    return Err(OnChangeError::BadValue(format!("timeout={v}"), "must be more than 0".into()));
                }
                t
            }
            None => DEFAULT_ACTION_TIMEOUT,
        };
        let debounce = match take("debounce") {
            Some(v) => duration(&format!("debounce={v}"), v)?,
            None => DEFAULT_ACTION_DEBOUNCE,
        };
        let initial = match take("initial") {
            Some("true") => true,
            Some("false") | None => false,
            Some(v) => {
                return Err(OnChangeError::BadValue(format!("initial={v}"), "expected true or false".into()));
            }
        };
        let action = match kind {
            "http" => {
                let [method, url] = positional[..] else { return Err(OnChangeError::HttpArgs) };
                let token_file = take("token-file").map(PathBuf::from);
                if token_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(OnChangeError::BadValue("token-file=".into(), "the path is empty".into()));
                }
                let token_param = match take("token-param") {
                    Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) => {
                        p.to_owned()
                    }
                    Some(p) => {
                        return Err(OnChangeError::BadValue(
                            format!("token-param={p}"),
                            "expected a name of letters, digits, '_', '-' or '.'".into(),
                        ));
                    }
                    None => DEFAULT_TOKEN_PARAM.to_owned(),
                };
                let (host, port, path, query) = parse_loopback_url(url)?;
                if !(method.len() <= 16 && !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase())) {
                    return Err(OnChangeError::BadMethod(method.to_owned()));
                }
                Action::Http(HttpAction { method: method.to_owned(), host, port, path, query, token_file, token_param })
            }
            "signal" => {
                let [sig] = positional[..] else { return Err(OnChangeError::SignalArgs) };
                let signal: SignalName = sig.parse()?;
                let target = match (take("pidfile"), take("process")) {
                    (Some(p), None) if !p.is_empty() => SignalTarget::PidFile(PathBuf::from(p)),
                    (None, Some(n)) if !n.is_empty() && n.len() <= 255 && !n.contains('/') => {
                        SignalTarget::Process(n.to_owned())
                    }
                    (None, Some(n)) => return Err(OnChangeError::BadProcess(n.to_owned())),
                    _ => return Err(OnChangeError::SignalArgs),
                };
                Action::Signal { signal, target }
            }
            other => return Err(OnChangeError::UnknownAction(other.to_owned())),
        };
        if let Some((k, v)) = options.first() {
            return Err(OnChangeError::BadOption(format!("{k}={v}")));
        }
        Ok(OnChange { watch: names, action, timeout, debounce, initial })
    }
}

/// One `--on-change` value as given. Its `Debug` hides URL queries (a user may put a token there,
/// although `token-file=` is the way), so not even the parsed command line shows one.
#[derive(Clone, PartialEq, Eq)]
pub struct OnChangeArg(pub String);

impl fmt::Debug for OnChangeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_queries(&self.0), f)
    }
}

fn parse_on_change_arg(s: &str) -> Result<OnChangeArg, std::convert::Infallible> {
    Ok(OnChangeArg(s.to_owned()))
}

/// `entry` with the query of every URL in it replaced by `<redacted>`.
pub fn redact_queries(entry: &str) -> String {
    let mut out = String::with_capacity(entry.len());
    let mut rest = entry;
    while let Some(q) = rest.find('?') {
        // Only a URL's `?`: the word it is in has a scheme.
        let word_start = rest[..q].rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let end = rest[q..].find(char::is_whitespace).map_or(rest.len(), |i| q + i);
        if rest[word_start..q].contains("://") {
            out.push_str(&rest[..q]);
            out.push_str("?<redacted>");
        } else {
            out.push_str(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `http://HOST[:PORT]/PATH[?QUERY]` with HOST a loopback address or `localhost`: an action reaches a
/// process of the task, never the network (it would be a way to send requests, or tokens, elsewhere).
fn parse_loopback_url(url: &str) -> Result<(String, u16, String, Option<SecretString>), OnChangeError> {
    // The query is cut off first, so no error message ever repeats it.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let bad = |why| OnChangeError::BadUrl(base.to_owned(), why);
    let rest = base.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs to a loopback host"))?;
    if base.contains('#') {
        return Err(bad("a fragment is not sent"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not allowed; use token-file="));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) && !p.contains(']') => {
            (h, p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be 1 to 65535"))?)
        }
        _ => (authority, 80),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(bad("the host must be loopback: 127.0.0.0/8, [::1] or localhost"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the path must be printable ASCII without spaces"));
    }
    if query.is_some_and(|q| !q.bytes().all(|b| b.is_ascii_graphic() && b != b'#')) {
        return Err(bad("the query must be printable ASCII without spaces"));
    }
    let query = query.filter(|q| !q.is_empty()).map(|q| SecretString::from(q.to_owned()));
    Ok((host.to_ascii_lowercase(), port, path.to_owned(), query))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(args: &[&str]) -> Result<Settings, clap::Error> {
        let argv = std::iter::once("secrets-sidecar").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.settings)
    }

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
    fn rds_iam_entries_share_the_name_space_and_need_aws() {
        let s = settings(&["--secret", "db=a", "--secret", "db=rds-iam://app@h.internal:3306"]).unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::DuplicateName(n)) if n == "db"));
        let s = settings(&["--secret", "db=rds-iam://app@h.internal:3306"]).unwrap();
        let c = s.validate().unwrap();
        assert_eq!((c.secrets.len(), c.rds_iam.len()), (0, 1));
        assert_eq!(c.rds_iam_renew_interval, Duration::from_secs(600));
        let s = settings(&["--secret", "db=rds-iam://app@h.internal:3306", "--dev-secrets", "/x.json"]).unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::RdsIamWithDev)));
        let s = settings(&["--secret", "db=x", "--rds-iam-renew-interval", "15m"]).unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::RenewInterval(_))));
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

    #[test]
    fn templates_are_read_and_checked_against_the_secrets_at_validation() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let good = file("good.j2", "{{ db.password }}\n");
        let c = settings(&["--secret", "db=x", "--template", &format!("url={good}")]).unwrap().validate().unwrap();
        assert_eq!(c.templates.len(), 1);
        assert_eq!(c.templates[0].inputs(&["db".into()]).unwrap(), ["db"]);

        let unknown = file("unknown.j2", "{{ dbb.password }}");
        let err = settings(&["--secret", "db=x", "--template", &format!("url={unknown}")]).unwrap().validate();
        assert!(
            matches!(err, Err(ConfigError::Template(TemplateError::UnknownVariable { ref variable, .. })) if variable == "dbb")
        );
        let broken = file("broken.j2", "{% if %}");
        let err = settings(&["--secret", "db=x", "--template", &format!("url={broken}")]).unwrap().validate();
        assert!(matches!(err, Err(ConfigError::Template(TemplateError::Syntax { .. }))));
        let err = settings(&["--secret", "db=x", "--template", "url=/nonexistent/t.j2"]).unwrap().validate();
        assert!(matches!(err, Err(ConfigError::Template(TemplateError::Read { .. }))));
        // One namespace for secrets and templates.
        let err = settings(&["--secret", "db=x", "--template", &format!("db={good}")]).unwrap().validate();
        assert!(matches!(err, Err(ConfigError::DuplicateTemplate(n)) if n == "db"));
        // A dev run without --secret: the names are the dev file's, checked by `run`.
        let c = settings(&["--dev-secrets", "/d.json", "--template", &format!("url={unknown}")]).unwrap().validate();
        assert!(c.is_ok());
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = settings(&["--secret", "db=x"]).unwrap();
        let c = s.validate().unwrap();
        assert_eq!(c.output_dir, PathBuf::from("/secrets"));
        assert_eq!(c.refresh_interval, Duration::from_secs(60));
        assert_eq!(c.rotation_poll_interval, Duration::from_secs(2));
        assert_eq!(c.min_refresh_gap, Duration::from_secs(5));
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.file, FileOptions { mode: 0o440, uid: None, gid: None });
        assert!(matches!(c.token, TokenSetting::Generate));
        assert_eq!(c.max_staleness, None);
        assert_eq!(c.source, SourceConfig::Aws { endpoint_url: None });
    }

    #[test]
    fn flags_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["secrets-sidecar", "check-config", "--secret", "db=x"]).unwrap();
        assert_eq!(cli.command, Some(Command::CheckConfig));
        assert_eq!(cli.settings.secrets, ["db=x"]);
    }

    #[test]
    fn duplicate_names_and_empty_lists_are_rejected() {
        let s = settings(&["--secret", "db=a", "--secret", "db=b"]).unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::DuplicateName(n)) if n == "db"));
        let s = settings(&[]).unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::NoSecrets)));
    }

    #[test]
    fn non_loopback_listen_needs_the_explicit_flag() {
        let s = settings(&["--secret", "db=a", "--listen", "0.0.0.0:2773"]).unwrap();
        assert!(matches!(s.validate(), Err(ConfigError::NonLoopback(_))));
        let s = settings(&["--secret", "db=a", "--listen", "0.0.0.0:2773", "--allow-non-loopback"]).unwrap();
        assert!(s.validate().is_ok());
        let s = settings(&["--secret", "db=a", "--listen", "[::1]:2773"]).unwrap();
        assert!(s.validate().is_ok());
    }

    #[test]
    fn file_mode_is_octal_and_bounded() {
        assert_eq!(parse_mode("0440"), Ok(0o440));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("7777").is_err());
    }

    #[test]
    fn token_debug_is_redacted() {
        let s = settings(&["--secret", "db=a", "--token", "hunter2-hunter2"]).unwrap();
        let raw = format!("{s:?}");
        assert!(!raw.contains("hunter2"), "the parsed command line: {raw}");
        let c = s.validate().unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("Given(<redacted>)"));
        assert!(matches!(c.token, TokenSetting::Given(t) if t.expose() == "hunter2-hunter2"));
    }

    #[test]
    fn token_and_no_token_conflict() {
        assert!(settings(&["--secret", "db=a", "--token", "t", "--no-token"]).is_err());
    }

    #[test]
    fn on_change_http_entries_parse_into_their_parts() {
        let a: OnChange =
            "app+redis=http GET http://127.0.0.1:9293/phased-restart token-file=/secrets/puma.token debounce=1s"
                .parse()
                .unwrap();
        assert_eq!(
            a,
            OnChange {
                watch: vec!["app".into(), "redis".into()],
                action: Action::Http(HttpAction {
                    method: "GET".into(),
                    host: "127.0.0.1".into(),
                    port: 9293,
                    path: "/phased-restart".into(),
                    query: None,
                    token_file: Some("/secrets/puma.token".into()),
                    token_param: "token".into(),
                }),
                timeout: DEFAULT_ACTION_TIMEOUT,
                debounce: Duration::from_secs(1),
                initial: false,
            }
        );
        let a: OnChange = "app=http POST http://[::1]/r?x=y token-param=auth timeout=2s initial=true".parse().unwrap();
        let Action::Http(h) = &a.action else { panic!("not http") };
        assert_eq!((h.host.as_str(), h.port, h.path.as_str()), ("[::1]", 80, "/r"));
        assert_eq!((h.query.as_ref().map(|q| q.expose()), h.token_param.as_str()), (Some("x=y"), "auth"));
        assert_eq!((a.timeout, a.debounce, a.initial), (Duration::from_secs(2), DEFAULT_ACTION_DEBOUNCE, true));
        let a: OnChange = "app=http PUT http://LOCALHOST:1".parse().unwrap();
        let Action::Http(h) = a.action else { panic!("not http") };
        assert_eq!(h.display_url(), "http://localhost:1/");
    }

    #[test]
    fn on_change_signal_entries_parse_into_their_parts() {
        let a: OnChange = "app=signal SIGUSR1 pidfile=/app/tmp/puma.pid".parse().unwrap();
        assert_eq!(
            a.action,
            Action::Signal { signal: SignalName::Usr1, target: SignalTarget::PidFile("/app/tmp/puma.pid".into()) }
        );
        let a: OnChange = "db=signal HUP process=nginx debounce=0s".parse().unwrap();
        assert_eq!(a.action, Action::Signal { signal: SignalName::Hup, target: SignalTarget::Process("nginx".into()) });
        assert_eq!(a.debounce, Duration::ZERO);
    }

    #[test]
    fn on_change_errors_name_the_offending_value() {
        use OnChangeError as E;
        for (entry, err) in [
            ("app", E::NoEquals),
            ("../x=signal HUP pidfile=/p", E::BadName("../x".into())),
            ("app+=signal HUP pidfile=/p", E::BadName("".into())),
            ("app=exec /bin/true", E::UnknownAction("exec".into())),
            ("app=http http://127.0.0.1/", E::HttpArgs),
            ("app=http get http://127.0.0.1/", E::BadMethod("get".into())),
            (
                "app=http GET https://127.0.0.1/",
                E::BadUrl("https://127.0.0.1/".into(), "only http:// URLs to a loopback host"),
            ),
            (
                "app=http GET http://10.0.0.8:9293/x?token=abc",
                E::BadUrl(
                    "http://10.0.0.8:9293/x".into(),
                    "the host must be loopback: 127.0.0.0/8, [::1] or localhost",
                ),
            ),
            (
                "app=http GET http://169.254.170.2/v2/credentials",
                E::BadUrl(
                    "http://169.254.170.2/v2/credentials".into(),
                    "the host must be loopback: 127.0.0.0/8, [::1] or localhost",
                ),
            ),
            (
                "app=http GET http://127.0.0.1.evil.example/",
                E::BadUrl(
                    "http://127.0.0.1.evil.example/".into(),
                    "the host must be loopback: 127.0.0.0/8, [::1] or localhost",
                ),
            ),
            (
                "app=http GET http://u:p@127.0.0.1/",
                E::BadUrl("http://u:p@127.0.0.1/".into(), "credentials in the URL are not allowed; use token-file="),
            ),
            (
                "app=http GET http://127.0.0.1:0/",
                E::BadUrl("http://127.0.0.1:0/".into(), "the port must be 1 to 65535"),
            ),
            (
                "app=http GET http://127.0.0.1/ token-param=a&b",
                E::BadValue("token-param=a&b".into(), "expected a name of letters, digits, '_', '-' or '.'".into()),
            ),
            ("app=signal KILL pidfile=/p", E::BadSignal("KILL".into())),
            ("app=signal USR1", E::SignalArgs),
            ("app=signal USR1 pidfile=/p process=puma", E::SignalArgs),
            ("app=signal USR1 process=a/b", E::BadProcess("a/b".into())),
            ("app=signal USR1 pidfile=/p token-file=/t", E::BadOption("token-file=/t".into())),
            ("app=signal USR1 pidfile=/p retries=3", E::BadOption("retries=3".into())),
            ("app=signal USR1 pidfile=/p debounce=1s debounce=2s", E::DuplicateOption("debounce".into())),
            (
                "app=signal USR1 pidfile=/p initial=yes",
                E::BadValue("initial=yes".into(), "expected true or false".into()),
            ),
            ("app=signal USR1 pidfile=/p timeout=0s", E::BadValue("timeout=0s".into(), "must be more than 0".into())),
        ] {
            assert_eq!(entry.parse::<OnChange>(), Err(err), "{entry}");
        }
        let err = "app=signal USR1 pidfile=/p debounce=soon".parse::<OnChange>().unwrap_err();
        assert!(err.to_string().starts_with("\"debounce=soon\": "), "{err}");
    }

    #[test]
    fn on_change_watches_only_configured_names_and_the_env_list_splits_on_semicolons() {
        let s = settings(&[
            "--secret",
            "app=a",
            "--secret",
            "db=rds-iam://u@h.internal:3306",
            "--on-change",
            "app+db=signal HUP pidfile=/p",
        ])
        .unwrap();
        assert_eq!(s.validate().unwrap().on_change[0].watch, ["app", "db"]);
        let s = settings(&["--secret", "app=a", "--on-change", "app+redis=signal HUP pidfile=/p"]).unwrap();
        let err = s.validate().unwrap_err();
        assert!(matches!(&err, ConfigError::OnChange { source: OnChangeError::UnknownName(n), .. } if n == "redis"));
        assert_eq!(
            err.to_string(),
            "invalid --on-change \"app+redis=signal HUP pidfile=/p\": watched name \"redis\" is not a configured secret"
        );
        // The same delimiter applies to the flag: one value, two actions (a URL may hold commas).
        let s = settings(&[
            "--secret",
            "app=a",
            "--on-change",
            "app=http GET http://127.0.0.1/a,b;app=signal HUP pidfile=/p",
        ])
        .unwrap();
        let c = s.validate().unwrap();
        assert_eq!(c.on_change.len(), 2);
        assert!(matches!(&c.on_change[0].action, Action::Http(h) if h.path == "/a,b"));
    }

    #[test]
    fn on_change_url_queries_are_redacted_in_debug_and_errors() {
        let entry = "app=http GET http://127.0.0.1:9293/x?token=hunter2-hunter2";
        let s = settings(&["--secret", "app=a", "--on-change", entry]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        let c = s.validate().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        let s = settings(&["--secret", "db=a", "--on-change", entry]).unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid --on-change \"app=http GET http://127.0.0.1:9293/x?<redacted>\": watched name \"app\" is not a configured secret"
        );
        assert_eq!(redact_queries("a=b?c http://h/p?q=1 x"), "a=b?c http://h/p?<redacted> x");
    }

    proptest! {
        /// Any accepted name stays inside the output directory and is neither a dot-file nor a path.
        #[test]
        fn accepted_names_are_plain_file_names(name in "\\PC{0,70}") {
            if valid_name(&name) {
                prop_assert!(!name.contains('/'));
                prop_assert!(!name.starts_with('.'));
                prop_assert!(name != "..");
                let spec = SecretSpec { name: name.clone(), secret_id: "x".into(), format: Format::Json };
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
