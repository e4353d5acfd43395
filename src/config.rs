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
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::actions::spec::{Action, OnChange, OnChangeError, SignalTarget, redact_queries};
use crate::entry::{Entry, RdsIamSpec, Replica, SecretSpec, SpecError, TemplateSpec, valid_region};
use crate::failover::DEFAULT_RETRY_INTERVAL;
use crate::publish::FileOptions;
use crate::schedule::Timing;
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
    /// A secret to keep current: NAME=SECRET_ID[?format=json|raw|env&failover_region=REGION], or an RDS IAM
    /// auth token to mint: NAME=rds-iam://USER@HOST:PORT[?region=R&dbname=D]. Repeatable; the env var takes
    /// a comma-separated list. NAME names the file and the URL; SECRET_ID is a secret name or ARN. Formats:
    /// json (the default) writes the SecretString, a JSON object, to NAME.json; raw the bytes as they are to
    /// NAME; env the object as a dotenv file to NAME.env. failover_region overrides --failover-region for
    /// this secret. For a URL or config file built from secrets, see --template.
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

    /// The Region of the secrets' replicas (ReplicateSecretToRegions): a check whose calls to a secret's own
    /// Region fail transiently (5xx, throttling, timeouts, connection errors) is done against its replica,
    /// read by the same name, or by the ARN with its Region replaced. A denial or a missing secret never
    /// fails over. Not for rds-iam:// entries [default: no failover]
    #[arg(long, env = "SIDECAR_FAILOVER_REGION", global = true, value_name = "REGION")]
    pub failover_region: Option<String>,

    /// While a secret is served from its replica, its own Region is asked again at the first check at least
    /// this long (plus up to 20% jitter) after it was last asked; the secret goes back after a success.
    /// [default: 60s]
    #[arg(long, env = "SIDECAR_FAILOVER_RETRY_INTERVAL", value_parser = parse_duration, global = true)]
    pub failover_retry_interval: Option<Duration>,

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

/// A validated configuration for `run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub secrets: Vec<SecretSpec>,
    /// `rds-iam://` entries: tokens signed locally, published like secrets.
    pub rds_iam: Vec<RdsIamSpec>,
    /// `--template` entries, read and compiled.
    pub templates: Vec<Arc<Template>>,
    pub rds_iam_renew_interval: Duration,
    /// How long a secret served from its replica waits before its own Region is asked again.
    pub failover_retry_interval: Duration,
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
    /// The intervals every secret's schedule follows.
    pub fn timing(&self) -> Timing {
        Timing {
            refresh_interval: self.refresh_interval,
            rotation_poll_interval: self.rotation_poll_interval,
            min_refresh_gap: self.min_refresh_gap,
        }
    }

    /// Every name that is published and can be watched by an on-change action.
    pub fn published_names(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.rds_iam.iter().map(|s| s.name.as_str()))
            .chain(self.templates.iter().map(|t| t.spec.name.as_str()))
    }

    /// What `check-config` prints: every entry, where it goes, and the settings in force. Never a token,
    /// a URL's query or a secret's value.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let c = self;
        let mut out = String::new();
        // Writing to a String cannot fail.
        macro_rules! w {
            ($($arg:tt)*) => {
                writeln!(out, $($arg)*).expect("writing to a String")
            };
        }
        w!("configuration OK");
        match &c.source {
            SourceConfig::Aws { endpoint_url } => {
                w!("source: Secrets Manager{}", endpoint_url.as_ref().map(|u| format!(" at {u}")).unwrap_or_default())
            }
            SourceConfig::Dev { path } => w!("source: dev file {}", path.display()),
        }
        for s in &c.secrets {
            w!(
                "secret {}: {} (format {}{}) -> {}",
                s.name,
                s.secret_id,
                s.format.as_str(),
                s.replica
                    .as_ref()
                    .map(|r| format!(", failover to {} in {}", r.secret_id, r.region))
                    .unwrap_or_default(),
                c.output_dir.join(s.file_name()).display()
            );
        }
        for s in &c.rds_iam {
            w!(
                "rds-iam {}: token for {}@{}:{}{}{} -> {}",
                s.name,
                s.user,
                s.host,
                s.port,
                s.region.as_ref().map(|r| format!(" in {r}")).unwrap_or_default(),
                s.dbname.as_ref().map(|d| format!(", dbname {d}")).unwrap_or_default(),
                c.output_dir.join(s.file_name()).display()
            );
        }
        let names: Vec<String> =
            c.secrets.iter().map(|s| s.name.clone()).chain(c.rds_iam.iter().map(|s| s.name.clone())).collect();
        for t in &c.templates {
            // Without --secret, a dev run's names come from the dev file: the inputs are known only at run.
            let inputs = match t.inputs(&names) {
                Ok(inputs) if !names.is_empty() => inputs.join(", "),
                _ => "(secrets of the dev file, checked at start)".to_owned(),
            };
            w!(
                "template {}: {} rendered from {}{} -> {}",
                t.spec.name,
                t.spec.path.display(),
                inputs,
                t.spec.from.as_ref().map(|f| format!(" (variables: the keys of {f})")).unwrap_or_default(),
                c.output_dir.join(&t.spec.name).display()
            );
        }
        let d = humantime::format_duration;
        if !c.rds_iam.is_empty() {
            w!("rds-iam renew interval: {}", d(c.rds_iam_renew_interval));
        }
        w!(
            "refresh interval: {} (rotation: {}, min forced gap: {})",
            d(c.refresh_interval),
            d(c.rotation_poll_interval),
            d(c.min_refresh_gap)
        );
        if c.secrets.iter().any(|s| s.replica.is_some()) {
            w!("failover retry interval: {} (+ up to 20% jitter)", d(c.failover_retry_interval));
        }
        w!("listen: {}", c.listen);
        w!(
            "file mode: {:04o}, owner: {}:{}",
            c.file.mode,
            c.file.uid.map_or("(process)".into(), |u| u.to_string()),
            c.file.gid.map_or("(process)".into(), |g| g.to_string())
        );
        w!(
            "token: {}",
            match c.token {
                TokenSetting::Given(_) => "given (not shown)",
                TokenSetting::Generate => "generated at start, written to .token",
                TokenSetting::Disabled => "DISABLED (--no-token)",
            }
        );
        if let Some(m) = c.max_staleness {
            w!("max staleness: {}", d(m));
        }
        for (i, a) in c.on_change.iter().enumerate() {
            let action = match &a.action {
                Action::Http(h) => format!(
                    "http {} {}{}{}",
                    h.method,
                    h.display_url(),
                    if h.query.is_some() { "?<query not shown>" } else { "" },
                    h.token_file
                        .as_ref()
                        .map(|p| format!(", token from {} as query parameter {}", p.display(), h.token_param))
                        .unwrap_or_default()
                ),
                Action::Signal { signal, target: SignalTarget::PidFile(p) } => {
                    format!("signal SIG{} to the pid in {}", signal.as_str(), p.display())
                }
                Action::Signal { signal, target: SignalTarget::Process(n) } => {
                    format!("signal SIG{} to every process named {n}", signal.as_str())
                }
            };
            w!(
                "on-change {i}: when {} changes: {action} (timeout {}, debounce {}, {})",
                a.watch.join("+"),
                d(a.timeout),
                d(a.debounce),
                if a.initial { "also after the initial publish" } else { "not at start" }
            );
        }
        out
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
    #[error("--failover-region {0:?} is not a Region name (like eu-west-1)")]
    BadFailoverRegion(String),
    #[error("invalid secret {name:?} with --failover-region: {source}")]
    Failover { name: String, source: SpecError },
    #[error(
        "--failover-region applies to Secrets Manager secrets only; rds-iam:// tokens are signed locally and \
             have no replica"
    )]
    FailoverWithoutSecrets,
    #[error("failover reads a replica in another Region of Secrets Manager and cannot be used with --dev-secrets")]
    FailoverWithDev,
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
        if let Some(region) = &self.failover_region {
            if !valid_region(region) {
                return Err(ConfigError::BadFailoverRegion(region.clone()));
            }
            if secrets.is_empty() && self.dev_secrets.is_none() {
                return Err(ConfigError::FailoverWithoutSecrets);
            }
            // An entry's own failover_region wins over the flag.
            for s in secrets.iter_mut().filter(|s| s.replica.is_none()) {
                s.replica = Some(
                    Replica::of(&s.secret_id, region)
                        .map_err(|source| ConfigError::Failover { name: s.name.clone(), source })?,
                );
            }
        }
        if self.dev_secrets.is_some() && (self.failover_region.is_some() || secrets.iter().any(|s| s.replica.is_some()))
        {
            return Err(ConfigError::FailoverWithDev);
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
        let failover_retry_interval = self.failover_retry_interval.unwrap_or(DEFAULT_RETRY_INTERVAL);
        for (flag, value, min) in [
            ("refresh-interval", self.refresh_interval, MIN_REFRESH_INTERVAL),
            ("rotation-poll-interval", self.rotation_poll_interval, Duration::from_millis(100)),
            ("failover-retry-interval", failover_retry_interval, MIN_REFRESH_INTERVAL),
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
            failover_retry_interval,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, clap::Error> {
        let argv = std::iter::once("secrets-sidecar").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.settings)
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
        assert_eq!(c.failover_retry_interval, DEFAULT_RETRY_INTERVAL);
        assert_eq!(c.secrets[0].replica, None, "no failover unless asked for");
    }

    #[test]
    fn failover_region_applies_to_every_secret_that_names_none_of_its_own() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf";
        let c = settings(&[
            "--secret",
            "db=prod/db",
            "--secret",
            &format!("app={arn}"),
            "--secret",
            "own=prod/own?failover_region=eu-central-1",
            "--secret",
            "token=rds-iam://app@h.internal:3306",
            "--failover-region",
            "us-west-2",
        ])
        .unwrap()
        .validate()
        .unwrap();
        let replicas: Vec<_> = c.secrets.iter().map(|s| s.replica.clone().unwrap()).collect();
        assert_eq!(
            replicas,
            [
                Replica { region: "us-west-2".into(), secret_id: "prod/db".into() },
                Replica {
                    region: "us-west-2".into(),
                    secret_id: "arn:aws:secretsmanager:us-west-2:123456789012:secret:app-AbCdEf".into()
                },
                Replica { region: "eu-central-1".into(), secret_id: "prod/own".into() },
            ]
        );
        assert_eq!(c.rds_iam.len(), 1, "a token entry is kept, and has no replica to read");
        let text = c.describe();
        assert!(text.contains("secret db: prod/db (format json, failover to prod/db in us-west-2) -> "), "{text}");
        assert!(text.contains("failover retry interval: 1m (+ up to 20% jitter)"), "{text}");
    }

    #[test]
    fn failover_that_cannot_work_is_a_configuration_error() {
        let err = |args: &[&str]| settings(args).unwrap().validate().unwrap_err().to_string();
        assert_eq!(
            err(&["--secret", "db=x", "--failover-region", "West"]),
            r#"--failover-region "West" is not a Region name (like eu-west-1)"#
        );
        assert_eq!(
            err(&["--secret", "db=arn:aws:secretsmanager:us-west-2:1:secret:x", "--failover-region", "us-west-2"]),
            r#"invalid secret "db" with --failover-region: the failover Region us-west-2 is the secret's own Region"#
        );
        assert!(
            err(&["--secret", "db=rds-iam://app@h.internal:3306", "--failover-region", "us-west-2"])
                .starts_with("--failover-region applies to Secrets Manager secrets only")
        );
        assert!(err(&["--dev-secrets", "/d.json", "--failover-region", "us-west-2"]).contains("--dev-secrets"));
        assert!(
            err(&["--dev-secrets", "/d.json", "--secret", "db=x?failover_region=us-west-2"]).contains("--dev-secrets")
        );
        assert_eq!(
            err(&["--secret", "db=x", "--failover-retry-interval", "500ms"]),
            "--failover-retry-interval must be at least 1s, got 500ms"
        );
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
}
