//! What HTTP and health read: one [`Entry`] per published name — a Secrets Manager secret, an
//! `rds-iam://` token or a `--template` — holding the version its file has, what its producer last
//! reported, and its change counter ([`crate::changes`]).
//!
//! The entries are made once, at start; the map never changes after that, so a read takes no lock but
//! its entry's. Each entry has exactly one writer, the task that produces it: it publishes a version
//! through [`crate::publish::Outlet`] (the file first, then here, then the counter) and reports what each
//! check found. That task keeps no copy of the current version: it reads it back from its entry, so
//! there is one place a version lives in memory.
//!
//! A [`Version`] keeps the bytes its file got, so HTTP serves exactly those (no parse or render per
//! request), and for a JSON object each top-level key's answer to `GET /v1/secrets/NAME/KEY`, made once
//! per version.
//!
//! Readiness is a latch (the linkerd2-proxy pattern): false until every entry has been published once,
//! then true for the life of the process. What that means for `/healthz` is [`crate::health`]'s to say.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::http::HeaderValue;
use hyper::body::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::changes::{Counter, Watch};
use crate::entry::Format;
use crate::secret::SecretValue;

/// What an entry is: where its versions come from, which file they go to and how HTTP serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A Secrets Manager secret (or a key of a `--dev-secrets` file), published in `format`.
    Secret { secret_id: String, format: Format },
    /// An RDS IAM auth token the sidecar signs: a JSON object in the shape of an RDS secret. `target` is
    /// the entry as given, `rds-iam://USER@HOST:PORT`.
    RdsIam { target: String },
    /// A `--template` rendered from other entries, at `path`.
    Template { path: PathBuf },
}

impl Kind {
    /// The file name inside the output directory. Names are validated ([`crate::entry::valid_name`]),
    /// so this never leaves it.
    pub fn file_name(&self, name: &str) -> String {
        match self {
            Kind::Secret { format: Format::Json, .. } | Kind::RdsIam { .. } => format!("{name}.json"),
            Kind::Secret { format: Format::Env, .. } => format!("{name}.env"),
            Kind::Secret { format: Format::Raw, .. } | Kind::Template { .. } => name.to_owned(),
        }
    }

    /// Where the versions come from, as `GET /v1/secrets` lists it.
    pub fn source(&self) -> String {
        match self {
            Kind::Secret { secret_id, .. } => secret_id.clone(),
            Kind::RdsIam { target } => target.clone(),
            Kind::Template { path } => format!("template:{}", path.display()),
        }
    }

    /// The format `GET /v1/secrets` lists.
    pub fn format_name(&self) -> &'static str {
        match self {
            Kind::Secret { format, .. } => format.as_str(),
            Kind::RdsIam { .. } => Format::Json.as_str(),
            Kind::Template { .. } => "template",
        }
    }

    /// What a version's value is to a template that uses it: a JSON object, or text.
    pub fn value_format(&self) -> Format {
        match self {
            Kind::Secret { format, .. } => *format,
            Kind::RdsIam { .. } => Format::Json,
            Kind::Template { .. } => Format::Raw,
        }
    }

    /// The `Content-Type` of `GET /v1/secrets/NAME`: the file's.
    pub fn content_type(&self) -> &'static str {
        match self {
            Kind::Secret { format: Format::Json, .. } | Kind::RdsIam { .. } => "application/json",
            Kind::Secret { format: Format::Raw, .. } => "application/octet-stream",
            Kind::Secret { format: Format::Env, .. } | Kind::Template { .. } => "text/plain; charset=utf-8",
        }
    }

    /// Whether `GET /v1/secrets/NAME/KEY` looks keys up in it: only a JSON object has keys.
    pub fn has_keys(&self) -> bool {
        self.value_format() != Format::Raw
    }
}

/// One published (or, for the pending one, fetched) version.
pub struct Version {
    pub id: String,
    /// The value as its source gave it: a secret's SecretString or SecretBinary, a token's JSON, a
    /// rendered template.
    value: SecretValue,
    /// The file's bytes where they are not the value itself: `format=env`'s dotenv rendering.
    rendered: Option<SecretValue>,
    /// A JSON object's top-level keys, each with its answer to `GET …/KEY`: a string as it is, anything
    /// else as its JSON text.
    keys: Option<BTreeMap<String, SecretValue>>,
    /// `"<id>"`, the HTTP ETag, as the header value every answer shares: made once per version, not per
    /// request. `None` for an id that cannot be a header value (Secrets Manager's are UUIDs).
    etag: Option<HeaderValue>,
    /// For an RDS IAM token: when it expires.
    expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version").field("id", &self.id).field("value", &self.value).finish_non_exhaustive()
    }
}

impl Version {
    /// A secret's version in `format`, or why its value cannot be published that way. The reason names
    /// no content: a JSON error by line and column, a dotenv refusal by key.
    pub fn of_secret(format: Format, id: String, value: SecretValue, binary: bool) -> Result<Version, String> {
        if format == Format::Raw {
            return Ok(Version::new(id, value, None, None, None));
        }
        if binary {
            return Err("SecretBinary needs format=raw".into());
        }
        let object = match serde_json::from_slice::<serde_json::Value>(value.expose()) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => return Err("not a JSON object (use format=raw for other values)".into()),
            Err(e) => return Err(format!("not valid JSON ({}:{})", e.line(), e.column())),
        };
        let rendered = match format {
            Format::Env => {
                Some(SecretValue::new(crate::dotenv::render(&object).map_err(|e| e.to_string())?.as_bytes().to_vec()))
            }
            Format::Json | Format::Raw => None,
        };
        Ok(Version::new(id, value, rendered, Some(keys(object)), None))
    }

    /// A JSON object the sidecar made itself (an RDS IAM token's file), valid until `expires_at`.
    pub fn token(id: String, value: SecretValue, expires_at: SystemTime) -> Version {
        let keys = match serde_json::from_slice(value.expose()) {
            Ok(serde_json::Value::Object(object)) => Some(keys(object)),
            _ => None,
        };
        Version::new(id, value, None, keys, Some(expires_at))
    }

    /// A rendered template: the value is the file.
    pub fn rendered(id: String, value: SecretValue) -> Version {
        Version::new(id, value, None, None, None)
    }

    fn new(
        id: String,
        value: SecretValue,
        rendered: Option<SecretValue>,
        keys: Option<BTreeMap<String, SecretValue>>,
        expires_at: Option<SystemTime>,
    ) -> Self {
        let etag = HeaderValue::from_maybe_shared(Bytes::from(format!("\"{id}\""))).ok();
        Version { id, value, rendered, keys, etag, expires_at }
    }

    /// What its source gave.
    pub fn value(&self) -> &SecretValue {
        &self.value
    }

    /// The bytes its file got, which HTTP serves.
    pub fn content(&self) -> &SecretValue {
        self.rendered.as_ref().unwrap_or(&self.value)
    }

    /// The answer to `GET …/KEY`; `None` for an unknown key or a value that is no JSON object.
    pub fn key(&self, key: &str) -> Option<&SecretValue> {
        self.keys.as_ref()?.get(key)
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.etag.as_ref()
    }

    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// Each top-level key's text: a string as it is, anything else as JSON (`3306`, `true`, `{"a":1}`).
fn keys(object: serde_json::Map<String, serde_json::Value>) -> BTreeMap<String, SecretValue> {
    object
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, SecretValue::from(text))
        })
        .collect()
}

/// How a secret is being checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// DescribeSecret each interval, GetSecretValue only on a new version.
    #[default]
    Describe,
    /// DescribeSecret was denied: GetSecretValue(AWSCURRENT) each interval, no rotation awareness.
    GetOnly,
}

/// What a secret's task shows of its check state after each check.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub mode: Mode,
    /// The `AWSPENDING` value while a rotation is under way, when it could be read; never written to disk.
    pub pending: Option<Arc<Version>>,
    /// `AWSPENDING` is on another version, readable or not.
    pub rotation_in_progress: bool,
    /// The Region of the Secrets Manager the secret is read from — the one the current value was last
    /// confirmed in: its own (an ARN's, else the SDK's), or its replica's while it is failed over. `None`
    /// for a dev file.
    pub region: Option<Arc<str>>,
    /// While the secret is served from its replica: why its own Region is not used, as its last failure
    /// said.
    pub primary_error: Option<String>,
}

/// An entry's state, as readers see it.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The version in the file; set in the same step that writes the file.
    pub current: Option<Arc<Version>>,
    pub view: View,
    /// Last check that succeeded (monotonic, for staleness) and its wall-clock time (for display).
    pub last_success: Option<(Instant, SystemTime)>,
    /// Last failure, cleared by the next success. Its text names a reason and an AWS code, never a value.
    pub last_error: Option<String>,
}

/// One published name.
#[derive(Debug)]
pub struct Entry {
    name: String,
    kind: Kind,
    state: RwLock<State>,
    changes: Counter,
    /// The store's count of entries not published yet, shared by all of them.
    unpublished: Arc<AtomicUsize>,
}

impl Entry {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    pub fn file_name(&self) -> String {
        self.kind.file_name(&self.name)
    }

    /// Reads the state in place, under the entry's read lock: for the request path, which needs a version
    /// (an `Arc`), not a copy of every field.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the state itself is always consistent.
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of the state.
    pub fn state(&self) -> State {
        self.read(State::clone)
    }

    /// The version in the file.
    pub fn current(&self) -> Option<Arc<Version>> {
        self.read(|s| s.current.clone())
    }

    /// Makes `version` the current one, once its file is in place; `rewritten` when the file's bytes
    /// changed. Then raises the change counter: a listener that wakes reads file and entry both new.
    pub fn publish(&self, version: Arc<Version>, rewritten: bool) {
        let first = self.update(|s| s.current.replace(version).is_none());
        if first {
            self.unpublished.fetch_sub(1, Ordering::AcqRel);
        }
        self.changes.published(rewritten);
    }

    /// Records the end of a check at `now`: a success, or the failure's text; and, for a secret, what
    /// the check saw.
    pub fn checked(&self, now: Instant, error: Option<String>, view: Option<View>) {
        self.update(|s| {
            match error {
                None => {
                    s.last_success = Some((now, SystemTime::now()));
                    s.last_error = None;
                }
                Some(e) => s.last_error = Some(e),
            }
            if let Some(view) = view {
                s.view = view;
            }
        });
    }

    /// Where the version about to be published comes from, set before it is: so that no reader sees a
    /// replica's value said to come from the primary (the rest of the view follows at the check's end).
    pub fn set_region(&self, region: Option<Arc<str>>, primary_error: Option<String>) {
        self.update(|s| {
            s.view.region = region;
            s.view.primary_error = primary_error;
        });
    }

    /// Sets or clears the last error without a check (a template's render).
    pub fn set_error(&self, error: Option<String>) {
        self.update(|s| s.last_error = error);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Every entry, by name.
#[derive(Debug)]
pub struct Store {
    entries: BTreeMap<String, Arc<Entry>>,
    unpublished: Arc<AtomicUsize>,
}

impl Store {
    /// A store of these entries, none published yet. Names are unique (the configuration checked them).
    pub fn new(entries: impl IntoIterator<Item = (String, Kind)>) -> Self {
        let unpublished = Arc::new(AtomicUsize::new(0));
        let entries: BTreeMap<_, _> = entries
            .into_iter()
            .map(|(name, kind)| {
                let entry = Entry {
                    name: name.clone(),
                    kind,
                    state: RwLock::default(),
                    changes: Counter::default(),
                    unpublished: unpublished.clone(),
                };
                (name, Arc::new(entry))
            })
            .collect();
        unpublished.store(entries.len(), Ordering::Release);
        Store { entries, unpublished }
    }

    /// A store of json secrets with these names, for tests.
    #[cfg(test)]
    pub(crate) fn for_names(names: &[&str]) -> Self {
        Store::new(
            names.iter().map(|n| (n.to_string(), Kind::Secret { secret_id: n.to_string(), format: Format::Json })),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    /// Every entry, in name order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    /// The change counters of `names`, watched together; `Err` names the first one that is not an entry.
    pub fn watch<S: AsRef<str>>(&self, names: &[S]) -> Result<Watch, String> {
        let counters = names
            .iter()
            .map(|n| {
                let entry = self.get(n.as_ref()).ok_or_else(|| n.as_ref().to_owned())?;
                Ok((entry.name.clone(), entry.subscribe()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Watch::new(counters))
    }

    /// True once every entry has been published at least once; never false again.
    pub fn is_ready(&self) -> bool {
        self.unpublished.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> SecretValue {
        SecretValue::from(s.to_owned())
    }

    fn version(format: Format, v: &str, binary: bool) -> Result<Version, String> {
        Version::of_secret(format, "v".into(), value(v), binary)
    }

    fn publish(store: &Store, name: &str) {
        store.get(name).unwrap().publish(Arc::new(Version::rendered("v1".into(), value("{}"))), true);
    }

    #[test]
    fn ready_only_when_every_entry_is_published_then_latched() {
        let store = Store::for_names(&["a", "b"]);
        publish(&store, "a");
        assert!(!store.is_ready());
        publish(&store, "a");
        assert!(!store.is_ready(), "a second version of the same entry is not another entry");
        publish(&store, "b");
        assert!(store.is_ready());
    }

    #[test]
    fn json_format_requires_an_object() {
        assert!(version(Format::Json, r#"{"a":1}"#, false).is_ok());
        assert!(version(Format::Json, "[1]", false).is_err());
        assert!(version(Format::Json, "hunter2", false).unwrap_err().starts_with("not valid JSON"));
        assert!(version(Format::Json, "{}", true).is_err());
        assert!(version(Format::Raw, "hunter2", false).is_ok());
    }

    #[test]
    fn env_format_renders_an_object_and_rejects_what_it_cannot_write() {
        let v = version(Format::Env, r#"{"A":"x y","B":2}"#, false).unwrap();
        assert_eq!(v.content().expose(), b"A='x y'\nB=2\n");
        assert_eq!(v.value().expose(), br#"{"A":"x y","B":2}"#, "the value stays the secret's JSON");
        let v = version(Format::Json, r#"{"A":"x y"}"#, false).unwrap();
        assert_eq!(v.content().expose(), br#"{"A":"x y"}"#, "json is written as is");
        assert!(version(Format::Env, "[1]", false).unwrap_err().starts_with("not a JSON object"));
        assert!(version(Format::Env, "{}", true).is_err());
        let reason = version(Format::Env, r#"{"ok":"1","bad-key":"s3cr3t"}"#, false).unwrap_err();
        assert_eq!(reason, r#"key "bad-key" is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"#);
        let reason = version(Format::Env, r#"{"K":"s3cr3t\nline"}"#, false).unwrap_err();
        assert!(reason.starts_with(r#"the value of key "K" contains a line break"#), "{reason}");
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }

    #[test]
    fn rejection_reason_never_quotes_the_value() {
        let reason = version(Format::Json, "s3cr3t-not-json", false).unwrap_err();
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }

    #[test]
    fn keys_are_answered_as_text_made_once_per_version() {
        let v = version(Format::Env, r#"{"user":"app","port":3306,"tls":{"ca":"x"},"n":null}"#, false).unwrap();
        let key = |k| v.key(k).map(|s| String::from_utf8(s.expose().to_vec()).unwrap());
        assert_eq!(key("user").as_deref(), Some("app"));
        assert_eq!(key("port").as_deref(), Some("3306"));
        assert_eq!(key("tls").as_deref(), Some(r#"{"ca":"x"}"#));
        assert_eq!(key("n").as_deref(), Some("null"));
        assert_eq!(key("password"), None);
        assert!(version(Format::Raw, r#"{"user":"app"}"#, false).unwrap().key("user").is_none(), "raw has no keys");
    }

    #[test]
    fn file_names_and_content_types_follow_the_kind() {
        let secret = |format| Kind::Secret { secret_id: "x".into(), format };
        let cases = [
            (secret(Format::Json), "db.json", "application/json", "json"),
            (secret(Format::Raw), "db", "application/octet-stream", "raw"),
            (secret(Format::Env), "db.env", "text/plain; charset=utf-8", "env"),
            (Kind::RdsIam { target: "rds-iam://a@b:1".into() }, "db.json", "application/json", "json"),
            (Kind::Template { path: "/t".into() }, "db", "text/plain; charset=utf-8", "template"),
        ];
        for (kind, file, content_type, format) in cases {
            assert_eq!(
                (kind.file_name("db").as_str(), kind.content_type(), kind.format_name()),
                (file, content_type, format)
            );
        }
    }

    #[test]
    fn a_version_prints_no_value() {
        let v = version(Format::Json, r#"{"password":"s3cr3t"}"#, false).unwrap();
        assert!(!format!("{v:?}").contains("s3cr3t"), "{v:?}");
    }
}
