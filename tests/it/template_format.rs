//! `--template`: files rendered from secrets by the real binary against moto — a `DATABASE_URL` through
//! rotations, a file fed by two secrets, a render error that keeps the last good file, start-up errors —
//! and the `urlencode` filter's promise, checked with the URL parsers of Python and Ruby.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use secrets_sidecar::entry::{Format, TemplateSpec};
use secrets_sidecar::secret::SecretValue;
use secrets_sidecar::template::Template;
use serde_json::Value;

use harness::{CLOSED_PORT, ContentReader, Moto, Sidecar, create_secret, rotate, sidecar_command, venv_python};

/// The issue's one-liner, with `?from=db`.
const DATABASE_URL: &str =
    "DATABASE_URL=mysql2://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ dbname }}\n";

fn db_secret(password: &str, extra: &str) -> String {
    let password = serde_json::to_string(password).unwrap();
    format!(r#"{{"username":"app","password":{password},"host":"db.internal","port":3306,"dbname":"app"{extra}}}"#)
}

/// A template file beside the test (not in the output directory).
fn template_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn metrics(sidecar: &Sidecar) -> String {
    reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap()
}

async fn health_of(sidecar: &Sidecar, name: &str) -> Value {
    sidecar.healthz().await.map(|(_, h)| h["secrets"][name].clone()).unwrap_or_default()
}

#[tokio::test]
async fn a_database_url_follows_a_rotation_atomically_and_an_equal_render_leaves_the_file_alone() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    let templates = tempfile::tempdir().unwrap();
    let path = template_file(templates.path(), "db_url.j2", DATABASE_URL);
    let first = create_secret(&sm, "app/db", &db_secret("first p@ss/w:rd", "")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "app/db")
        .arg("--template")
        .arg(format!("db_url={}?from=db", path.display()))
        .arg("--refresh-interval")
        .arg("1s")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    const FIRST: &str = "DATABASE_URL=mysql2://app:first%20p%40ss%2Fw%3Ard@db.internal:3306/app\n";
    const SECOND: &str = "DATABASE_URL=mysql2://app:second%23pass%2B%25@db.internal:3306/app\n";
    assert_eq!(sidecar.read_file("db_url").as_deref(), Some(FIRST));
    let meta = std::fs::metadata(sidecar.dir().join("db_url")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o440, "the mode of every secret file");
    let res = sidecar.get("/v1/secrets/db_url").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(res.headers()["etag"], format!("\"{first}\"").as_str(), "its version is its input's");
    assert_eq!(res.text().await.unwrap(), FIRST, "HTTP serves what the file holds");
    let health = health_of(&sidecar, "db_url").await;
    assert_eq!((health["ready"].clone(), health["version_id"].clone()), (Value::Bool(true), Value::from(first)));

    // A reader polling the file throughout sees the whole old or the whole new file, never anything else.
    let reader = ContentReader::start(sidecar.dir().join("db_url"));
    rotate(&sm, "app/db", &db_secret("second#pass+%", "")).await;
    sidecar
        .wait_for("the rotated DATABASE_URL", Duration::from_secs(15), async || {
            sidecar.read_file("db_url").as_deref() == Some(SECOND)
        })
        .await;
    let seen = reader.finish();
    assert_eq!(seen, [FIRST, SECOND].map(String::from).into_iter().collect(), "torn or missing reads");
    assert_eq!(sidecar.get("/v1/secrets/db_url").await.text().await.unwrap(), SECOND);

    // A new version that renders the same bytes (a key the template does not use) leaves the file alone.
    let before = std::fs::metadata(sidecar.dir().join("db_url")).unwrap();
    let third = rotate(&sm, "app/db", &db_secret("second#pass+%", r#","note":"unused""#)).await;
    sidecar
        .wait_for("the equal render", Duration::from_secs(15), async || {
            health_of(&sidecar, "db_url").await["version_id"] == third.as_str()
        })
        .await;
    let after = std::fs::metadata(sidecar.dir().join("db_url")).unwrap();
    assert_eq!((after.ino(), after.mtime(), after.mtime_nsec()), (before.ino(), before.mtime(), before.mtime_nsec()));
    assert_eq!(sidecar.read_file("db_url").as_deref(), Some(SECOND));
    let text = metrics(&sidecar).await;
    for line in [
        r#"secrets_sidecar_template_renders_total{template="db_url",result="ok"} 2"#,
        r#"secrets_sidecar_template_renders_total{template="db_url",result="unchanged"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }

    let mut names: Vec<_> = std::fs::read_dir(sidecar.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, [".token", "db.json", "db_url"], "no temp file left");
    let log = sidecar.log_text();
    assert!(log.contains("rendered template"), "{log}");
    for leaked in ["p@ss", "p%40ss", "second#pass", "second%23pass"] {
        assert!(!log.contains(leaked), "the debug log shows {leaked:?}:\n{log}");
    }
}

#[tokio::test]
async fn a_template_fed_by_two_secrets_re_renders_when_either_rotates() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    let templates = tempfile::tempdir().unwrap();
    let path = template_file(
        templates.path(),
        "app.env.j2",
        "DATABASE_URL=mysql2://{{ db.username }}:{{ db.password | urlencode }}@{{ db.host }}/{{ db.dbname }}\n\
         REDIS_URL=rediss://:{{ redis.auth_token | urlencode }}@{{ redis.host }}:6379/0\n",
    );
    create_secret(&sm, "app/db", &db_secret("db-1", "")).await;
    create_secret(&sm, "app/redis", r#"{"auth_token":"r/1","host":"cache.internal"}"#).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "app/db")
        .secret("redis", "app/redis")
        .env("SIDECAR_TEMPLATES", &format!("app.env={}", path.display()))
        .arg("--refresh-interval")
        .arg("1s")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    let file = |db: &str, redis: &str| {
        format!("DATABASE_URL=mysql2://app:{db}@db.internal/app\nREDIS_URL=rediss://:{redis}@cache.internal:6379/0\n")
    };
    assert_eq!(sidecar.read_file("app.env"), Some(file("db-1", "r%2F1")));

    rotate(&sm, "app/redis", r#"{"auth_token":"r/2","host":"cache.internal"}"#).await;
    sidecar
        .wait_for("the redis rotation", Duration::from_secs(15), async || {
            sidecar.read_file("app.env") == Some(file("db-1", "r%2F2"))
        })
        .await;
    let redis_version = health_of(&sidecar, "redis").await["version_id"].as_str().unwrap().to_owned();
    let db_version = rotate(&sm, "app/db", &db_secret("db-2", "")).await;
    sidecar
        .wait_for("the db rotation", Duration::from_secs(15), async || {
            sidecar.read_file("app.env") == Some(file("db-2", "r%2F2"))
        })
        .await;
    // Inputs in name order.
    assert_eq!(health_of(&sidecar, "app.env").await["version_id"], format!("{db_version}+{redis_version}").as_str());
    assert_eq!(sidecar.get("/v1/secrets/app.env").await.text().await.unwrap(), file("db-2", "r%2F2"));
    assert_eq!(sidecar.get("/v1/secrets/app.env/DATABASE_URL").await.status(), 404, "no key lookup in a template");
}

#[tokio::test]
async fn a_render_error_keeps_the_last_good_file_shows_in_health_and_the_next_good_rotation_recovers() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    let templates = tempfile::tempdir().unwrap();
    let url = template_file(templates.path(), "db_url.j2", DATABASE_URL);
    let user = template_file(templates.path(), "user.j2", "{{ db.username }}\n");
    create_secret(&sm, "app/db", &db_secret("good-1", "")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "app/db")
        .arg("--template")
        .arg(format!("db_url={}?from=db", url.display()))
        .arg("--template")
        .arg(format!("user={}", user.display()))
        .arg("--refresh-interval")
        .arg("1s")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    const GOOD_1: &str = "DATABASE_URL=mysql2://app:good-1@db.internal:3306/app\n";
    assert_eq!(sidecar.read_file("db_url").as_deref(), Some(GOOD_1));
    let good_version = health_of(&sidecar, "db_url").await["version_id"].clone();

    // A version without the `dbname` the template needs: that template fails, the other one renders.
    rotate(&sm, "app/db", r#"{"username":"app2","password":"bad-never-written","host":"db.internal","port":3306}"#)
        .await;
    sidecar
        .wait_for("the render error in health", Duration::from_secs(15), async || {
            !health_of(&sidecar, "db_url").await["last_error"].is_null()
        })
        .await;
    let (status, health) = sidecar.healthz().await.unwrap();
    assert_eq!(status, 200, "like a rejected version: ready stays latched, the error is shown");
    assert_eq!(
        health["secrets"]["db_url"]["last_error"],
        "template db_url: undefined value at line 1 (missing: dbname)"
    );
    assert_eq!(health["secrets"]["db_url"]["version_id"], good_version, "the last good render is still served");
    assert_eq!(health["secrets"]["db"]["last_error"], Value::Null, "the secret itself is fine");
    assert_eq!(health["secrets"]["user"]["last_error"], Value::Null);
    sidecar
        .wait_for("the other template", Duration::from_secs(15), async || {
            sidecar.read_file("user").as_deref() == Some("app2\n")
        })
        .await;
    assert_eq!(sidecar.read_file("db_url").as_deref(), Some(GOOD_1), "the last good file, byte for byte");
    assert_eq!(sidecar.get("/v1/secrets/db_url").await.text().await.unwrap(), GOOD_1);
    let text = metrics(&sidecar).await;
    assert!(text.contains(r#"secrets_sidecar_template_renders_total{template="db_url",result="failed"} 1"#), "{text}");
    for text in [health.to_string(), sidecar.log_text(), text] {
        assert!(!text.contains("bad-never-written") && !text.contains("good-1"), "a value leaked: {text}");
    }

    rotate(&sm, "app/db", &db_secret("good-2", "")).await;
    sidecar
        .wait_for("the recovery", Duration::from_secs(15), async || {
            sidecar.read_file("db_url").as_deref() == Some("DATABASE_URL=mysql2://app:good-2@db.internal:3306/app\n")
        })
        .await;
    assert_eq!(health_of(&sidecar, "db_url").await["last_error"], Value::Null);
}

/// `run` with a bad template exits 2 naming it, before anything is fetched (the endpoint is a closed port).
async fn run_with(args: &[String]) -> (Option<i32>, String, String) {
    let mut cmd = sidecar_command();
    cmd.args(["run", "--no-token", "--output-dir", "/nonexistent-never-used"]);
    cmd.args(args);
    cmd.env("AWS_ENDPOINT_URL_SECRETS_MANAGER", format!("http://127.0.0.1:{CLOSED_PORT}"));
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.kill_on_drop(true).output()).await.unwrap().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_syntax_error_or_an_unknown_variable_exits_2_naming_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let broken = template_file(dir.path(), "broken.j2", "DATABASE_URL={{ db.password | urlencode }\n");
    let unknown = template_file(dir.path(), "unknown.j2", "{{ db.password }}{{ redis.auth_token }}\n");
    let good = template_file(dir.path(), "good.j2", DATABASE_URL);
    let t = |name: &str, p: &Path| format!("--template={name}={}", p.display());

    let (code, _, err) = run_with(&["--secret=db=app/db".into(), t("db_url", &broken)]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("template db_url ({}): syntax error: ", broken.display())), "{err}");
    assert!(err.contains("(in db_url:1)"), "{err}");

    let (code, _, err) = run_with(&["--secret=db=app/db".into(), t("app.env", &unknown)]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(r#"template app.env ("#)
            && err.contains(r#"variable "redis" names no configured secret (secrets: db)"#),
        "{err}"
    );

    let (code, _, err) = run_with(&["--secret=db=app/db".into(), t("db", &good)]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(r#"template name "db" is already the name of a secret or another template"#), "{err}");

    let (code, _, err) = run_with(&["--secret=db=app/db".into(), "--template=x=/nonexistent/x.j2".into()]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("template x: cannot read /nonexistent/x.j2: No such file or directory"), "{err}");

    // A dev file's names are known only at run: checked there, still exit 2, before anything is written.
    let dev = template_file(dir.path(), "dev.json", r#"{"db": {"password": "x"}}"#);
    let out = tempfile::tempdir().unwrap();
    let mut cmd = sidecar_command();
    cmd.args(["run", "--no-token", "--dev-secrets"]).arg(&dev).arg("--output-dir").arg(out.path());
    cmd.arg(t("app.env", &unknown)).arg("--listen").arg("127.0.0.1:0");
    let o = tokio::time::timeout(Duration::from_secs(20), cmd.kill_on_drop(true).output()).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(r#"variable "redis" names no configured secret (secrets: db)"#), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing published");

    // The control: the good template passes check-config, which shows what it is rendered from.
    let mut cmd = sidecar_command();
    cmd.args(["check-config", "--secret=db=app/db", "--secret=redis=app/redis", "--output-dir=/out"]);
    cmd.arg(format!("{}?from=db", t("db_url", &good))).arg(t("app.env", &unknown));
    let o = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains(&format!(
            "template db_url: {} rendered from db (variables: the keys of db) -> /out/db_url",
            good.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("template app.env: {} rendered from db, redis -> /out/app.env", unknown.display())),
        "{stdout}"
    );
}

/// What Python's `urlsplit` + `unquote` and Ruby's `URI.parse` + `URI.decode_www_form_component` read from
/// each URL: `[user, password, host, port, path]`.
fn parse_urls(urls: &[String]) -> (Vec<Vec<Value>>, Vec<Vec<Value>>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("urls.txt");
    std::fs::write(&file, urls.join("\n")).unwrap();
    let python = Command::new(venv_python())
        .args([
            "-c",
            "import json, sys; from urllib.parse import urlsplit, unquote\n\
             out = []\n\
             for line in open(sys.argv[1], encoding='utf-8').read().split('\\n'):\n\
             \x20   u = urlsplit(line)\n\
             \x20   try: port = u.port\n\
             \x20   except ValueError as e: port = str(e)\n\
             \x20   out.append([unquote(u.username or ''), unquote(u.password or ''), u.hostname, port, u.path])\n\
             sys.stdout.write(json.dumps(out))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(python.status.success(), "python: {}", String::from_utf8_lossy(&python.stderr));
    let ruby = Command::new("ruby")
        .args([
            "-ruri",
            "-rjson",
            "-e",
            "out = File.read(ARGV[0], encoding: 'UTF-8').split(\"\\n\", -1).map do |line|\n\
               u = URI.parse(line)\n\
               d = ->(s) { URI.decode_www_form_component(s.to_s).force_encoding('UTF-8') }\n\
               [d.(u.user), d.(u.password), u.host, u.port, u.path]\n\
             rescue URI::Error => e\n\
               [e.class.name]\n\
             end\n\
             STDOUT.write(JSON.generate(out))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(ruby.status.success(), "ruby: {}", String::from_utf8_lossy(&ruby.stderr));
    (serde_json::from_slice(&python.stdout).unwrap(), serde_json::from_slice(&ruby.stdout).unwrap())
}

fn url_template() -> Template {
    let spec = TemplateSpec { name: "u".into(), path: "/t/u.j2".into(), from: Some("db".into()) };
    Template::compile(
        spec,
        "mysql2://{{ username | urlencode }}:{{ password | urlencode }}@db.internal:3306/app".into(),
    )
    .unwrap()
}

fn render_url(t: &Template, user: &str, password: &str) -> String {
    let value = SecretValue::from(serde_json::json!({ "username": user, "password": password }).to_string());
    String::from_utf8(t.render(&[("db", Format::Json, &value)]).unwrap().expose().to_vec()).unwrap()
}

/// Each URL read back as `[user, password, "db.internal", 3306, "/app"]` by both parsers, or what differed.
fn misread(urls: &[String], expected: &[(String, String)]) -> Vec<String> {
    let (python, ruby) = parse_urls(urls);
    let mut found = vec![];
    for (parser, got) in [("python", python), ("ruby", ruby)] {
        for ((url, (user, password)), got) in urls.iter().zip(expected).zip(got) {
            let want = serde_json::json!([user, password, "db.internal", 3306, "/app"]);
            if Value::from(got.clone()) != want {
                found.push(format!("{parser}: {url} read as {got:?}"));
            }
        }
    }
    found
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// The promise of `urlencode`: any printable user and password survive a URL's userinfo in the URL
    /// parsers of Python and Ruby, and the host, port and path after them stay what they were.
    #[test]
    fn urlencoded_credentials_read_back_exactly_in_python_and_ruby(
        pairs in vec(("\\PC{0,12}", prop_oneof!["[ -~]{1,24}", "[@:/?#%+ &=\\[\\]!$'()*,;~.\\\\\"<>^`{|}]{1,16}", "\\PC{1,16}"]), 1..40)
    ) {
        let t = url_template();
        let urls: Vec<String> = pairs.iter().map(|(u, p)| render_url(&t, u, p)).collect();
        let found = misread(&urls, &pairs);
        prop_assert!(found.is_empty(), "{found:#?}");
    }
}

/// The control: the check catches what minijinja's own urlencode would write (`/` left as it is) and raw
/// passwords with `@` or `#`.
#[test]
fn the_round_trip_check_catches_an_unencoded_slash_at_or_hash() {
    let pairs: Vec<(String, String)> =
        [("app", "a/b"), ("app", "p@ss"), ("app", "x#y"), ("app", "plain")].map(|(u, p)| (u.into(), p.into())).to_vec();
    let naive: Vec<String> = pairs.iter().map(|(u, p)| format!("mysql2://{u}:{p}@db.internal:3306/app")).collect();
    let found = misread(&naive, &pairs);
    // Python's urlsplit splits the authority at its last `@`, so only Ruby misreads a raw `@`.
    for (parser, broken) in [("python", "a/b"), ("python", "x#y"), ("ruby", "a/b"), ("ruby", "p@ss"), ("ruby", "x#y")] {
        assert!(
            found.iter().any(|f| f.starts_with(parser) && f.contains(&format!(":{broken}@"))),
            "{parser} {broken}: {found:#?}"
        );
    }
    assert!(!found.iter().any(|f| f.contains("plain")), "{found:#?}");
    // The same passwords, encoded by the filter, read back.
    let t = url_template();
    let encoded: Vec<String> = pairs.iter().map(|(u, p)| render_url(&t, u, p)).collect();
    assert_eq!(misread(&encoded, &pairs), Vec::<String>::new());
}

/// What the README says of `tojson` in a dotenv file written by a template: sh, Ruby's dotenv 2.4 and
/// python-dotenv read back a `tojson` string exactly when it has none of `'` `<` `>` `&` (written as
/// `\u0027`-style escapes, which none of them decodes), `$` or `` ` `` (expanded by sh and Ruby), no
/// control character and no `\` before an `n` or `r`; `"` and other `\` are fine. Otherwise at least one
/// of them reads something else.
#[test]
fn tojson_in_a_dotenv_template_reads_back_only_without_the_documented_characters() {
    use crate::env_format::{PARSERS, read_back};
    let exact = ["p@ss w0rd#1", r#"say "hi""#, r"C:\tmp\dir", "é/€ ; | ~ {}", ""];
    // Ruby's dotenv 2.4 turns `\n` into a line break before it unescapes `\\`, so a backslash before n or r.
    let misread = ["it's", "a<b", "a>b", "a&b", "$HOME", "`id`", "tab\there", r"C:\new", r"C:\run"];
    let values: Vec<&str> = exact.iter().chain(&misread).copied().collect();
    let source: String = (0..values.len()).map(|i| format!("K{i}={{{{ secrets.v.K{i} | tojson }}}}\n")).collect();
    let spec = TemplateSpec { name: "app.env".into(), path: "/t/app.env.j2".into(), from: None };
    let t = Template::compile(spec, source).unwrap();
    let object: serde_json::Map<String, Value> =
        values.iter().enumerate().map(|(i, v)| (format!("K{i}"), Value::from(*v))).collect();
    let value = SecretValue::from(Value::Object(object).to_string());
    let rendered = t.render(&[("v", Format::Json, &value)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, rendered.expose()).unwrap();
    let keys: Vec<String> = (0..values.len()).map(|i| format!("K{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut wrong_somewhere = vec![false; values.len()];
    for parser in PARSERS {
        let got = read_back(parser, &file, &keys).unwrap();
        for (i, (want, got)) in values.iter().zip(&got).enumerate() {
            let ok = got.as_deref() == Some(*want);
            if i < exact.len() {
                assert!(ok, "{parser:?} read {got:?} for {want:?}");
            }
            wrong_somewhere[i] |= !ok;
        }
    }
    for (i, v) in misread.iter().enumerate() {
        assert!(wrong_somewhere[exact.len() + i], "{v:?} read back everywhere: the README is out of date");
    }
}
