//! `--template NAME=PATH[?from=SECRET]`: a file rendered from a template the user provides, fed by one or
//! more secrets — `DATABASE_URL=mysql2://{{ username }}:{{ password | urlencode }}@…` in one line.
//!
//! The engine is [minijinja] (Jinja2 syntax), configured for config files rather than HTML: no
//! auto-escaping, the template's trailing newline kept, and [`UndefinedBehavior::Strict`] so a missing key
//! is an error, never an empty password. Its `debug` feature is off: with it, an error carries the render
//! context — the secrets — for display. Our own errors name the template, minijinja's error kind and line,
//! and the missing `a.b` paths (key names, from the template's text), never a value
//! (`render_errors_carry_no_value`).
//!
//! `urlencode` is ours, not minijinja's: theirs leaves `/` unencoded (fine in a query string), and a `/`
//! in a URL's password ends the authority — `mysql2://app:a/b@db` is user `app`, password `a`, path `/b@db`.
//! Ours encodes everything but RFC 3986's unreserved characters, so any string survives as a userinfo part
//! (the round trip through Python's and Ruby's URL parsers is in `tests/it/template_format.rs`).
//!
//! The context: every input secret under its name (a JSON secret, or an `rds-iam://` token entry, as an
//! object; a raw one as a string) and all of them again in `secrets`, for names that are no identifiers
//! (`secrets["my-db"].password`). With `from=SECRET`, that secret's top-level keys are the variables
//! instead, and `secrets` is still there. `secrets` is always that map, whatever a secret is called.
//!
//! A template's inputs are known at start, from the variables it uses ([`Template::inputs`]): naming
//! `secrets` makes every secret an input; a variable that names no secret is a configuration error.
//!
//! One task per template ([`start`]) watches its inputs' change counters ([`crate::changes`]): once every
//! input has been published it renders, then again whenever one changes. The result is published like a
//! secret, through its [`Outlet`] — the file atomically and only when its bytes changed, then the store
//! (so `/v1/secrets/NAME`, `/healthz` and readiness see it), then its own change counter. A failed render
//! keeps the last good file and value and shows in `last_error`, like a rejected secret version; a file
//! that could not be written is tried again with backoff ([`crate::backoff`]).

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::backoff::{backoff, unit_random};
use crate::entry::{Format, TemplateSpec};
use crate::metrics::{Metrics, RenderResult};
use crate::percent::UNRESERVED;
use crate::publish::{Outcome, Outlet};
use crate::secret::SecretValue;
use crate::store::{Entry, Store, Version};
use crate::task::Services;

/// The variable that holds every input by name.
pub const SECRETS_VAR: &str = "secrets";
/// Retries of a render whose file could not be written (a full disk): from the first, doubling, to the cap.
const PUBLISH_RETRY_FIRST: Duration = Duration::from_secs(1);
const PUBLISH_RETRY_CAP: Duration = Duration::from_secs(30);

/// What is wrong with a template at start. Names the template and its file; a syntax error's detail is
/// minijinja's, about the template's own text.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: cannot read {}: {source}", path.display())]
    Read { name: String, path: PathBuf, source: io::Error },
    #[error("template {name} ({}): {detail}", path.display())]
    Syntax { name: String, path: PathBuf, detail: String },
    #[error(
        "template {name} ({}): variable {variable:?} names no configured secret (secrets: {known}); \
         a key of a secret is written SECRET.KEY, or give ?from=SECRET to use one secret's keys as variables",
        path.display()
    )]
    UnknownVariable { name: String, path: PathBuf, variable: String, known: String },
    #[error("template {name}: from={from:?} names no configured secret")]
    UnknownFrom { name: String, from: String },
    #[error("template name {0:?} is already the name of a secret")]
    NameTaken(String),
}

/// Why a render failed. A fixed shape: minijinja's error kind and line, key paths — no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{kind} at line {line}{}", missing_text(missing))]
    Engine { kind: String, line: usize, missing: Vec<String> },
    #[error("from={0:?} is not a JSON object")]
    FromNotObject(String),
    #[error("input {0:?} is not valid JSON")]
    Input(String),
}

fn missing_text(missing: &[String]) -> String {
    if missing.is_empty() { String::new() } else { format!(" (missing: {})", missing.join(", ")) }
}

/// A `--template`, read and compiled.
pub struct Template {
    pub spec: TemplateSpec,
    env: Environment<'static>,
    /// The top-level variables it uses that are not minijinja's own globals (`range`, `dict`, …).
    variables: BTreeSet<String>,
    /// Its trivial lookups (`db.password`), for naming what is missing when a render fails.
    paths: Vec<String>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template").field("spec", &self.spec).field("variables", &self.variables).finish()
    }
}

impl Template {
    /// Reads and compiles the template file.
    pub fn load(spec: TemplateSpec) -> Result<Template, TemplateError> {
        let source = std::fs::read_to_string(&spec.path).map_err(|source| TemplateError::Read {
            name: spec.name.clone(),
            path: spec.path.clone(),
            source,
        })?;
        Template::compile(spec, source)
    }

    /// Compiles `source` as the template of `spec`.
    pub fn compile(spec: TemplateSpec, source: String) -> Result<Template, TemplateError> {
        let env = environment(&spec.name, source).map_err(|e| TemplateError::Syntax {
            name: spec.name.clone(),
            path: spec.path.clone(),
            detail: e.to_string(),
        })?;
        let template = env.get_template(&spec.name).expect("added above");
        let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
        let variables =
            template.undeclared_variables(false).into_iter().filter(|v| !globals.contains(v.as_str())).collect();
        let mut paths: Vec<String> = template.undeclared_variables(true).into_iter().collect();
        paths.sort();
        Ok(Template { spec, env, variables, paths })
    }

    /// The secrets this template is rendered from, among the configured `secrets`: all of them when it
    /// uses `secrets`, its `from` secret, and every other variable it uses, which must name a secret.
    pub fn inputs(&self, secrets: &[String]) -> Result<Vec<String>, TemplateError> {
        let name = &self.spec.name;
        if secrets.contains(name) {
            return Err(TemplateError::NameTaken(name.clone()));
        }
        let mut inputs = BTreeSet::new();
        if let Some(from) = &self.spec.from {
            if !secrets.contains(from) {
                return Err(TemplateError::UnknownFrom { name: name.clone(), from: from.clone() });
            }
            inputs.insert(from.clone());
        }
        if self.variables.contains(SECRETS_VAR) {
            inputs.extend(secrets.iter().cloned());
        }
        // With from=, the other variables are that secret's keys, known only when it is fetched.
        if self.spec.from.is_none() {
            for variable in self.variables.iter().filter(|v| *v != SECRETS_VAR) {
                if !secrets.contains(variable) {
                    return Err(TemplateError::UnknownVariable {
                        name: name.clone(),
                        path: self.spec.path.clone(),
                        variable: variable.clone(),
                        known: secrets.join(", "),
                    });
                }
                inputs.insert(variable.clone());
            }
        }
        Ok(inputs.into_iter().collect())
    }

    /// Renders from the inputs' published values (`(name, format, value)`).
    pub fn render(&self, inputs: &[(&str, Format, &SecretValue)]) -> Result<SecretValue, RenderError> {
        let ctx = self.context(inputs)?;
        let template = self.env.get_template(&self.spec.name).expect("added at compile");
        let mut out = SecretBuf::default();
        match template.render_captured_to(&ctx, &mut out) {
            Ok(_) => Ok(SecretValue::new(std::mem::take(&mut *out.0))),
            Err(e) => {
                let missing = if e.kind() == ErrorKind::UndefinedError { self.missing(&ctx) } else { vec![] };
                Err(RenderError::Engine { kind: e.kind().to_string(), line: e.line().unwrap_or(0), missing })
            }
        }
    }

    fn context(&self, inputs: &[(&str, Format, &SecretValue)]) -> Result<Value, RenderError> {
        let mut secrets = IndexMap::with_capacity(inputs.len());
        for (name, format, value) in inputs {
            let v = match format {
                Format::Raw => match std::str::from_utf8(value.expose()) {
                    Ok(text) => Value::from(text),
                    Err(_) => Value::from_bytes(value.expose().to_vec()),
                },
                Format::Json | Format::Env => serde_json::from_slice::<serde_json::Value>(value.expose())
                    .map(json_value)
                    .map_err(|_| RenderError::Input((*name).to_owned()))?,
            };
            secrets.insert(Value::from(*name), v);
        }
        let mut top: IndexMap<Value, Value> = match &self.spec.from {
            Some(from) => {
                let object = secrets
                    .get(&Value::from(from.as_str()))
                    .filter(|v| v.kind() == minijinja::value::ValueKind::Map)
                    .ok_or_else(|| RenderError::FromNotObject(from.clone()))?;
                object
                    .try_iter()
                    .map_err(|_| RenderError::FromNotObject(from.clone()))?
                    .map(|k| {
                        let v = object.get_item(&k).unwrap_or_default();
                        (k, v)
                    })
                    .collect()
            }
            None => secrets.clone(),
        };
        top.insert(Value::from(SECRETS_VAR), Value::from(secrets));
        Ok(Value::from(top))
    }

    /// The template's `a.b.c` lookups that the context lacks, named by the first missing step.
    fn missing(&self, ctx: &Value) -> Vec<String> {
        let mut missing = BTreeSet::new();
        for path in &self.paths {
            let mut at = ctx.clone();
            let mut walked = Vec::new();
            for step in path.split('.') {
                walked.push(step);
                at = at.get_attr(step).unwrap_or(Value::UNDEFINED);
                if at.is_undefined() {
                    missing.insert(walked.join("."));
                    break;
                }
            }
        }
        missing.into_iter().collect()
    }
}

/// One template in an environment set up for config files.
fn environment(name: &str, source: String) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // A config file's last line ends in a newline; Jinja's default drops it.
    env.set_syntax(minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build()?);
    env.add_filter("urlencode", urlencode);
    env.add_filter("tojson", tojson);
    env.add_template_owned(name.to_owned(), source)?;
    Ok(env)
}

/// Percent-encodes a string (or a number) so it can stand anywhere in a URL — a user or password before
/// the `@`, a path segment, a query value: everything but `A-Za-z0-9-._~` becomes `%XX` of its UTF-8.
pub fn urlencode(value: &Value) -> Result<String, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::from(ErrorKind::UndefinedError));
    }
    if let Some(text) = value.as_str() {
        return Ok(percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string());
    }
    if let Some(bytes) = value.as_bytes() {
        return Ok(percent_encoding::percent_encode(bytes, UNRESERVED).to_string());
    }
    match value.kind() {
        minijinja::value::ValueKind::Number | minijinja::value::ValueKind::Bool => {
            Ok(percent_encoding::utf8_percent_encode(&value.to_string(), UNRESERVED).to_string())
        }
        _ => Err(minijinja::Error::new(ErrorKind::InvalidOperation, "urlencode takes a string or a number")),
    }
}

/// minijinja's `tojson`, except that an undefined value is an error: theirs writes `null`, which would
/// let a missing key through strict undefined.
fn tojson(value: &Value, indent: Option<Value>, args: minijinja::value::Kwargs) -> Result<Value, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::from(ErrorKind::UndefinedError));
    }
    minijinja::filters::tojson(value, indent, args)
}

/// A secret's JSON as a template value, objects keeping their key order.
fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(a) => Value::from(a.into_iter().map(json_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => {
            Value::from(o.into_iter().map(|(k, v)| (Value::from(k), json_value(v))).collect::<IndexMap<_, _>>())
        }
    }
}

/// The render's output buffer: grown by copying into a larger zeroizing buffer, so no reallocation leaves
/// a piece of the rendered file behind in freed memory.
#[derive(Default)]
struct SecretBuf(Zeroizing<Vec<u8>>);

impl io::Write for SecretBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let needed = self.0.len() + buf.len();
        if needed > self.0.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(self.0.capacity() * 2).max(256)));
            bigger.extend_from_slice(&self.0);
            // The old buffer is zeroed as it is dropped here.
            self.0 = bigger;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts one task per template, each rendering from `inputs` (from [`Template::inputs`]).
pub fn start(services: &Services, templates: Vec<(Arc<Template>, Vec<String>)>) {
    for (template, inputs) in templates {
        let entry = services.store.get(&template.spec.name).expect("every template has a store entry").clone();
        let task = RenderTask {
            template,
            inputs,
            store: services.store.clone(),
            outlet: Outlet::new(services.publisher.clone(), entry),
            metrics: services.metrics.clone(),
        };
        let cancel = services.cancel.clone();
        services.tracker.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = task.run() => {}
            }
        });
    }
}

/// One template's task: the only writer of its file and store entry.
struct RenderTask {
    template: Arc<Template>,
    inputs: Vec<String>,
    store: Arc<Store>,
    outlet: Outlet,
    metrics: Arc<Metrics>,
}

impl RenderTask {
    async fn run(self) {
        let mut inputs = self.store.watch(&self.inputs).expect("a template's inputs are in the store");
        // Failed writes in a row, and when to try again.
        let mut failures = 0;
        let mut retry_at = None;
        loop {
            // Seen before the store is read: a publication after this point wakes the loop again.
            let published = inputs.counts().iter().all(|c| *c > 0);
            if published || retry_at.is_some() {
                retry_at = if self.render_and_publish().await {
                    failures = 0;
                    None
                } else {
                    failures += 1;
                    Some(Instant::now() + backoff(failures - 1, PUBLISH_RETRY_FIRST, PUBLISH_RETRY_CAP, unit_random()))
                };
            }
            tokio::select! {
                () = sleep_until(retry_at) => {}
                alive = inputs.changed() => if !alive { return },
            }
        }
    }

    fn entry(&self) -> &Entry {
        self.outlet.entry()
    }

    /// Renders from the store's current values and publishes; false when the file could not be written
    /// (worth another try without a new input). A render error waits for a new input.
    async fn render_and_publish(&self) -> bool {
        let name = &self.template.spec.name;
        let current: Vec<(String, Format, Arc<Version>)> = self
            .inputs
            .iter()
            .filter_map(|n| {
                let entry = self.store.get(n)?;
                entry.current().map(|v| (n.clone(), entry.kind().value_format(), v))
            })
            .collect();
        // The version of a render is the versions it was rendered from: stable across restarts (an ETag
        // stays valid), and no digest of the content that could confirm a guessed password.
        let version_id: String = current.iter().map(|(_, _, v)| v.id.as_str()).collect::<Vec<_>>().join("+");
        let versions: String = current.iter().map(|(n, _, v)| format!("{n}@{}", v.id)).collect::<Vec<_>>().join(",");
        let refs: Vec<(&str, Format, &SecretValue)> =
            current.iter().map(|(n, f, v)| (n.as_str(), *f, v.value())).collect();
        let rendered = match self.template.render(&refs) {
            Ok(rendered) => rendered,
            Err(e) => {
                self.metrics.render(name, RenderResult::failed);
                let error = format!("template {name}: {e}");
                tracing::warn!(template = %name, inputs = %versions, error = %error,
                    "template render failed; keeping the last good file");
                self.entry().set_error(Some(error));
                return true;
            }
        };
        match self.outlet.publish(Arc::new(Version::rendered(version_id, rendered))).await {
            Ok(outcome) => {
                self.entry().set_error(None);
                let unchanged = outcome == Outcome::Unchanged;
                self.metrics.render(name, if unchanged { RenderResult::unchanged } else { RenderResult::ok });
                tracing::info!(template = %name, inputs = %versions, file = %self.outlet.path().display(),
                    unchanged_on_disk = unchanged, "rendered template");
                true
            }
            Err(e) => {
                self.metrics.render(name, RenderResult::failed);
                let error = format!("template {name}: {e}");
                tracing::warn!(template = %name, inputs = %versions, error = %error,
                    "writing the rendered template failed; trying again");
                self.entry().set_error(Some(error));
                false
            }
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str =
        r#"{"username":"app","password":"p@ss:w/rd?#%+ é","host":"db.internal","port":3306,"dbname":"app"}"#;
    const DATABASE_URL: &str =
        "DATABASE_URL=mysql2://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ dbname }}\n";

    fn spec(name: &str, from: Option<&str>) -> TemplateSpec {
        TemplateSpec { name: name.into(), path: PathBuf::from(format!("/t/{name}.j2")), from: from.map(Into::into) }
    }

    fn compiled(source: &str, from: Option<&str>) -> Template {
        Template::compile(spec("out", from), source.to_owned()).unwrap()
    }

    fn value(s: &str) -> SecretValue {
        SecretValue::from(s.to_owned())
    }

    fn render(t: &Template, inputs: &[(&str, Format, &str)]) -> Result<String, RenderError> {
        let values: Vec<SecretValue> = inputs.iter().map(|(_, _, v)| value(v)).collect();
        let refs: Vec<(&str, Format, &SecretValue)> =
            inputs.iter().zip(&values).map(|((n, f, _), v)| (*n, *f, v)).collect();
        t.render(&refs).map(|v| String::from_utf8(v.expose().to_vec()).unwrap())
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_issues_one_liner_renders_from_one_secrets_keys() {
        let t = compiled(DATABASE_URL, Some("db"));
        assert_eq!(t.inputs(&names(&["db", "redis"])).unwrap(), ["db"]);
        assert_eq!(
            render(&t, &[("db", Format::Json, DB)]).unwrap(),
            "DATABASE_URL=mysql2://app:p%40ss%3Aw%2Frd%3F%23%25%2B%20%C3%A9@db.internal:3306/app\n",
            "the password encoded whole, the trailing newline kept"
        );
    }

    #[test]
    fn every_input_is_a_variable_by_name_and_in_secrets() {
        let t = compiled(
            "{{ db.username }}|{{ secrets.db.host }}|{{ secrets[\"redis-auth\"] }}|{{ token.password }}\n",
            None,
        );
        let all = names(&["db", "redis-auth", "token", "unused"]);
        assert_eq!(t.inputs(&all).unwrap(), all, "naming `secrets` makes every secret an input");
        let out = render(
            &t,
            &[
                ("db", Format::Json, DB),
                ("redis-auth", Format::Raw, "r4w {{ not a template }}"),
                ("token", Format::Json, r#"{"password":"tok"}"#),
            ],
        );
        assert_eq!(out.unwrap(), "app|db.internal|r4w {{ not a template }}|tok\n", "values are never templates");
    }

    #[test]
    fn tojson_keeps_a_secrets_key_order() {
        let t = compiled("{{ db | tojson }} {{ db.a | tojson }}", None);
        assert_eq!(
            render(&t, &[("db", Format::Json, r#"{"z":1,"a":"it's \"q\""}"#)]).unwrap(),
            r#"{"z": 1, "a": "it\u0027s \"q\""} "it\u0027s \"q\"""#
        );
    }

    #[test]
    fn inputs_are_the_secrets_a_template_names() {
        let secrets = names(&["db", "redis", "app"]);
        let t = compiled("{% for i in range(2) %}{{ db.host }}{{ redis }}{% endfor %}{% set x = 1 %}{{ x }}", None);
        assert_eq!(t.inputs(&secrets).unwrap(), ["db", "redis"], "range is minijinja's, x the template's own");
        let t = compiled("{{ username }} {{ secrets.redis }}", Some("db"));
        assert_eq!(
            t.inputs(&secrets).unwrap(),
            secrets.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>()
        );
        let t = compiled("static\n", None);
        assert_eq!(t.inputs(&secrets).unwrap(), Vec::<String>::new());

        let err = compiled("{{ db.host }}{{ dbb.host }}", None).inputs(&secrets).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template out (/t/out.j2): variable \"dbb\" names no configured secret (secrets: db, redis, app); \
             a key of a secret is written SECRET.KEY, or give ?from=SECRET to use one secret's keys as variables"
        );
        let err = compiled("{{ username }}", Some("nope")).inputs(&secrets).unwrap_err();
        assert_eq!(err.to_string(), "template out: from=\"nope\" names no configured secret");
        let err = compiled("x", None).inputs(&names(&["out"])).unwrap_err();
        assert_eq!(err.to_string(), "template name \"out\" is already the name of a secret");
    }

    #[test]
    fn a_syntax_error_names_the_template_its_file_and_line() {
        let err = Template::compile(spec("db_url", None), "line one\n{{ db.password | }}\n".into()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("template db_url (/t/db_url.j2): syntax error: "), "{text}");
        assert!(text.ends_with("(in db_url:2)"), "{text}");
        let err = Template::compile(spec("x", None), "{% include 'other' %}".into()).unwrap_err();
        assert!(err.to_string().starts_with("template x (/t/x.j2): syntax error"), "no includes: {err}");
    }

    #[test]
    fn a_missing_key_fails_the_render_and_is_named() {
        let t = compiled("url={{ db.username }}:{{ db.password | urlencode }}@{{ db.host }}/{{ db.dbname }}\n", None);
        let without_dbname = r#"{"username":"app","password":"s3cr3t","host":"h"}"#;
        assert_eq!(
            render(&t, &[("db", Format::Json, without_dbname)]),
            Err(RenderError::Engine { kind: "undefined value".into(), line: 1, missing: vec!["db.dbname".into()] })
        );
        let without_password = r#"{"username":"app","host":"h","dbname":"d"}"#;
        let err = render(&t, &[("db", Format::Json, without_password)]).unwrap_err();
        assert_eq!(err.to_string(), "undefined value at line 1 (missing: db.password)");
        // In a condition, too: strict undefined is not "false".
        let t = compiled("{% if db.tls %}tls{% endif %}", None);
        assert!(render(&t, &[("db", Format::Json, "{}")]).is_err());
        // tojson too (minijinja's own writes `null` for a missing key).
        let t = compiled("{{ db.tls | tojson }}", None);
        assert_eq!(
            render(&t, &[("db", Format::Json, "{}")]).unwrap_err().to_string(),
            "undefined value at line 1 (missing: db.tls)"
        );
        // What `default` and `is defined` are for.
        let t = compiled("{% if db.tls is defined %}tls{% else %}plain{% endif %}", None);
        assert_eq!(render(&t, &[("db", Format::Json, "{}")]).unwrap(), "plain");
        let t = compiled("{{ db.port | default(3306) }}", None);
        assert_eq!(render(&t, &[("db", Format::Json, "{}")]).unwrap(), "3306");
    }

    /// The control for the test above: minijinja's default (lenient) undefined would have written an empty
    /// password into the file.
    #[test]
    fn lenient_undefined_would_write_an_empty_value() {
        let mut env = Environment::new();
        env.add_template("t", "u={{ db.password }};").unwrap();
        let ctx = minijinja::context! { db => Value::from(IndexMap::<Value, Value>::new()) };
        assert_eq!(env.get_template("t").unwrap().render(ctx).unwrap(), "u=;");
    }

    #[test]
    fn a_raw_input_where_an_object_is_needed_fails() {
        let t = compiled("{{ username }}", Some("db"));
        assert_eq!(render(&t, &[("db", Format::Raw, "s3cr3t")]), Err(RenderError::FromNotObject("db".into())));
        let t = compiled("{{ db.username }}", None);
        let err = render(&t, &[("db", Format::Raw, "s3cr3t")]).unwrap_err();
        assert_eq!(err.to_string(), "undefined value at line 1 (missing: db.username)");
    }

    #[test]
    fn urlencode_leaves_only_unreserved_characters() {
        let all: String = (' '..='~').collect();
        let encoded = urlencode(&Value::from(all.as_str())).unwrap();
        assert_eq!(
            encoded,
            "%20%21%22%23%24%25%26%27%28%29%2A%2B%2C-.%2F0123456789%3A%3B%3C%3D%3E%3F%40ABCDEFGHIJKLMNOPQRSTUVWXYZ\
             %5B%5C%5D%5E_%60abcdefghijklmnopqrstuvwxyz%7B%7C%7D~"
        );
        assert_eq!(urlencode(&Value::from("é😀\n")).unwrap(), "%C3%A9%F0%9F%98%80%0A");
        assert_eq!(urlencode(&Value::from(6379)).unwrap(), "6379");
        assert_eq!(urlencode(&Value::from_bytes(vec![0, 255])).unwrap(), "%00%FF");
        assert!(urlencode(&Value::from(())).is_err(), "null is no password");
        assert_eq!(urlencode(&Value::UNDEFINED).unwrap_err().kind(), ErrorKind::UndefinedError);
    }

    const SENTINEL: &str = "s3cr3t-Sentinel-9f2e";

    /// Whether `text` shows any piece of the sentinel a reader could use.
    fn leaks(text: &str) -> bool {
        text.contains(SENTINEL) || text.contains("s3cr3t") || text.contains("Sentinel")
    }

    /// Every way a render can fail, over a context that holds a secret: neither our error nor minijinja's
    /// own (its Display, alternate Display and Debug) shows it.
    #[test]
    fn render_errors_carry_no_value() {
        let db = format!(r#"{{"username":"app","password":"{SENTINEL}","n":{{"k":"{SENTINEL}"}}}}"#);
        for source in [
            "{{ db.password + 1 }}",
            "{{ db.password | int }}",
            "{{ db.password.x.y }}",
            "{{ db.password | urlencode(1) }}",
            "{{ db.n | urlencode }}",
            "{{ db.password | nofilter }}",
            "{{ db.password() }}",
            "{{ db.n.k.missing }}",
            "{{ db[db.password] }}",
            "{% for c in db.password %}{{ c.x }}{% endfor %}",
            "{{ db.password ~ db.missing }}",
            "{{ db.password | join(1, 2) }}",
            "{{ db.password is nosuchtest }}",
            "{{ raise(db.password) }}",
        ] {
            let env = match environment("t", source.to_owned()) {
                Ok(env) => env,
                // Unknown filters and tests are found at compile time in some versions.
                Err(e) => {
                    assert!(!leaks(&format!("{e} {e:#} {e:?}")), "{source}: {e:?}");
                    continue;
                }
            };
            let t = Template { spec: spec("t", None), env, variables: BTreeSet::new(), paths: vec![] };
            let ctx_inputs = [("db", Format::Json, db.as_str())];
            let ours = render(&t, &ctx_inputs).expect_err(source);
            assert!(!leaks(&format!("{ours} {ours:?}")), "{source}: {ours}");
            let values = [value(&db)];
            let ctx = t.context(&[("db", Format::Json, &values[0])]).unwrap();
            let theirs = t.env.get_template("t").unwrap().render(&ctx).expect_err(source);
            assert!(!leaks(&format!("{theirs} {theirs:#} {theirs:?}")), "{source}: minijinja's {theirs:?}");
        }
    }

    /// The control for the test above: an error that does carry the value is caught by the same check,
    /// and our error, built from the kind and line only, still carries none of it.
    #[test]
    fn the_leak_check_catches_an_error_that_carries_the_value() {
        let mut env = environment("t", "{{ db.password | tell }}".to_owned()).unwrap();
        env.add_filter("tell", |v: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("bad value {v}")))
        });
        let t = Template { spec: spec("t", None), env, variables: BTreeSet::new(), paths: vec![] };
        let db = format!(r#"{{"password":"{SENTINEL}"}}"#);
        let values = [value(&db)];
        let ctx = t.context(&[("db", Format::Json, &values[0])]).unwrap();
        let theirs = t.env.get_template("t").unwrap().render(&ctx).unwrap_err();
        assert!(leaks(&theirs.to_string()), "the check sees a value in minijinja's error: {theirs}");
        let ours = render(&t, &[("db", Format::Json, &db)]).unwrap_err();
        assert_eq!(ours.to_string(), "invalid operation at line 1");
    }

    #[test]
    fn debug_output_shows_no_template_value() {
        let t = compiled(DATABASE_URL, Some("db"));
        let out = render(&t, &[("db", Format::Json, DB)]).unwrap();
        let rendered = SecretValue::from(out);
        assert!(!format!("{t:?} {rendered:?}").contains("p@ss"));
    }

    #[test]
    fn the_output_buffer_grows_without_losing_bytes() {
        use std::io::Write;
        let mut buf = SecretBuf::default();
        let chunk = [7u8; 100];
        for _ in 0..50 {
            buf.write_all(&chunk).unwrap();
        }
        assert_eq!(buf.0.len(), 5000);
        assert!(buf.0.iter().all(|b| *b == 7));
    }
}
