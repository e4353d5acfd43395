//! `format=env`: the rendered dotenv file read back by the real consumers — `sh` sourcing (dash, Debian's
//! `/bin/sh`), Ruby's dotenv (Debian's `ruby-dotenv`, 2.4) and python-dotenv (the pinned test venv) — over
//! arbitrary values, and the real binary publishing such a file through rotations.
//!
//! Each property case writes one file with many values and runs each parser once over it, so a run of the
//! property costs a few dozen processes, not thousands.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use secrets_sidecar::dotenv::{Quoting, quoting, render};
use serde_json::{Map, Value};

use harness::{ContentReader, Moto, Sidecar, create_secret, rotate, venv_python};

/// The three parsers the quoting is proven against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Parser {
    Sh,
    RubyDotenv,
    PythonDotenv,
}

pub(crate) const PARSERS: [Parser; 3] = [Parser::Sh, Parser::RubyDotenv, Parser::PythonDotenv];

/// What `parser` reads from `file` for each of `keys` (`None`: the key is missing), or why it failed. Also
/// what `template_format` checks its README claim about `tojson` with.
pub(crate) fn read_back(parser: Parser, file: &Path, keys: &[&str]) -> Result<Vec<Option<String>>, String> {
    if keys.is_empty() {
        // Every value was refused. (`printf` with no arguments would still print its format once.)
        return Ok(vec![]);
    }
    let output = match parser {
        // `printf '%s\0'`: values cannot hold a NUL, so it separates them unambiguously. An unset key prints
        // as empty; the `${K+set}` marker tells the two apart.
        Parser::Sh => {
            let args: String = keys.iter().map(|k| format!(" \"${{{k}+set:}}${k}\"")).collect();
            Command::new("sh")
                .arg("-c")
                .arg(format!("set -a; . \"$1\"; printf '%s\\0'{args}"))
                .arg("sh")
                .arg(file)
                .output()
        }
        Parser::RubyDotenv => Command::new("ruby")
            .args([
                "-rdotenv",
                "-rjson",
                "-e",
                "STDOUT.write(JSON.generate(Dotenv::Environment.new(ARGV[0], true).to_h))",
            ])
            .arg(file)
            .output(),
        Parser::PythonDotenv => Command::new(venv_python())
            .args([
                "-c",
                "import json, sys; from dotenv import dotenv_values; \
                 sys.stdout.write(json.dumps(dotenv_values(sys.argv[1], interpolate=False)))",
            ])
            .arg(file)
            .output(),
    }
    .map_err(|e| format!("{parser:?} could not run: {e} (ruby-dotenv comes with `make test`)"))?;
    if !output.status.success() {
        return Err(format!("{parser:?} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let stdout = String::from_utf8(output.stdout).map_err(|e| format!("{parser:?}: not UTF-8: {e}"))?;
    match parser {
        Parser::Sh => {
            let fields: Vec<&str> = stdout.split_terminator('\0').collect();
            if fields.len() != keys.len() {
                return Err(format!("sh printed {} values for {} keys", fields.len(), keys.len()));
            }
            Ok(fields.iter().map(|f| f.strip_prefix("set:").map(str::to_owned)).collect())
        }
        Parser::RubyDotenv | Parser::PythonDotenv => {
            let map: Map<String, Value> =
                serde_json::from_str(&stdout).map_err(|e| format!("{parser:?} printed no JSON object: {e}"))?;
            Ok(keys.iter().map(|k| map.get(*k).and_then(Value::as_str).map(str::to_owned)).collect())
        }
    }
}

/// Every difference between what `file_text` was meant to carry and what each parser reads from it.
fn mismatches(file_text: &str, expected: &[(String, String)]) -> Vec<(Parser, String)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, file_text).unwrap();
    let keys: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let mut found = Vec::new();
    for parser in PARSERS {
        match read_back(parser, &file, &keys) {
            Err(e) => found.push((parser, e)),
            Ok(values) => {
                for ((key, want), got) in expected.iter().zip(values) {
                    if got.as_deref() != Some(want.as_str()) {
                        found.push((parser, format!("{key}: wrote {want:?}, read {got:?}")));
                    }
                }
            }
        }
    }
    found
}

/// Values with every character some parser treats specially, unicode (including separators Python's
/// `str.splitlines` would split on), and line breaks and NULs, which must be refused.
fn awkward_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        "[a-z '\"$`\\\\#={}()!~*?;&|<>\t]{0,16}",
        "[a-z'\"$\\\\\n\r\0\u{85}\u{a0}\u{2028}\u{feff}é€😀]{0,12}",
        "\\PC{0,16}",
    ]
}

fn keyed(values: &[String]) -> Vec<(String, String)> {
    values.iter().enumerate().map(|(i, v)| (format!("K{i}"), v.clone())).collect()
}

fn object(pairs: &[(String, String)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The promise of `format=env`: whatever the renderer writes, sh, Ruby's dotenv and python-dotenv
    /// (`interpolate=False`) all read back exactly.
    #[test]
    fn every_value_written_reads_back_exactly_in_sh_ruby_and_python(values in vec(awkward_value(), 1..60)) {
        let accepted: Vec<String> = values.into_iter().filter(|v| quoting(v).is_ok()).collect();
        let expected = keyed(&accepted);
        let file = render(&object(&expected)).unwrap();
        let found = mismatches(&file, &expected);
        prop_assert!(found.is_empty(), "{found:#?}\nfile:\n{}", file.as_str());
    }
}

/// The check above is not vacuous: it catches a renderer that writes values unquoted, and one that puts
/// every value in single quotes (python-dotenv reads `\\` there as `\`, sh cannot hold a `'`).
#[test]
fn the_round_trip_check_catches_naive_quoting() {
    let naive = |pairs: &[(String, String)], quote: bool| -> String {
        pairs.iter().map(|(k, v)| if quote { format!("{k}='{v}'\n") } else { format!("{k}={v}\n") }).collect()
    };
    let values = ["a #b", "'q'", "${HOME}x", "plain"].map(String::from);
    let expected = keyed(&values);
    let found = mismatches(&naive(&expected, false), &expected);
    let caught: BTreeSet<Parser> = found.iter().map(|(p, _)| *p).collect();
    assert_eq!(caught, PARSERS.into_iter().collect(), "unquoted: {found:#?}");
    assert!(!found.iter().any(|(_, m)| m.starts_with("K3:")), "a plain value reads back anywhere: {found:#?}");

    let values = [r"a\\b", "it's"].map(String::from);
    let expected = keyed(&values);
    let found = mismatches(&naive(&expected, true), &expected);
    assert!(found.iter().any(|(p, m)| *p == Parser::PythonDotenv && m.starts_with("K0:")), "{found:#?}");
    assert!(found.iter().any(|(p, _)| *p == Parser::Sh), "{found:#?}");
    // The renderer's own file for the same values reads back everywhere.
    assert_eq!(mismatches(&render(&object(&expected)).unwrap(), &expected), vec![]);
}

/// Quotes of both kinds in one value: double quotes with `\"` carry it to all three parsers (a value the
/// renderer once refused). Written without that escape, some parser reads it back wrong.
#[test]
fn values_with_both_quotes_read_back_exactly_in_sh_ruby_and_python() {
    let values = [r#"dq" and sq' mixed"#, r#"it's "quoted""#, r#"a\\b""#, r#"'\""#, r#"C:\dir "x" it's"#, "'\"'\"#"]
        .map(String::from);
    for v in &values {
        assert_eq!(quoting(v), Ok(Quoting::Double), "{v:?}");
    }
    let expected = keyed(&values);
    let file = render(&object(&expected)).unwrap();
    assert!(file.starts_with("K0=\"dq\\\" and sq' mixed\"\n"), "{}", file.as_str());
    assert_eq!(mismatches(&file, &expected), vec![], "file:\n{}", file.as_str());

    let unescaped: String = file.lines().map(|l| format!("{}\n", l.replace("\\\"", "\""))).collect();
    assert!(!mismatches(&unescaped, &expected).is_empty(), "the check cannot tell:\n{unescaped}");
}

const FIRST: &str = r#"{"SECRET_KEY_BASE":"first","REDIS_AUTH":"p@ss w0rd#1","PORT":6379}"#;
const FIRST_FILE: &str = "SECRET_KEY_BASE=first\nREDIS_AUTH='p@ss w0rd#1'\nPORT=6379\n";
const SECOND: &str = r#"{"SECRET_KEY_BASE":"second","REDIS_AUTH":"it's C:\\tmp #1","PORT":6379}"#;
const SECOND_FILE: &str = "SECRET_KEY_BASE=second\nREDIS_AUTH=\"it's C:\\\\tmp #1\"\nPORT=6379\n";

#[tokio::test]
async fn an_env_secret_follows_a_rotation_atomically_and_a_bad_key_keeps_the_last_good_file() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "app/boot", FIRST).await;
    let sidecar =
        Sidecar::builder(&moto).secret("app", "app/boot?format=env").arg("--refresh-interval").arg("1s").spawn().await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.read_file("app.env").as_deref(), Some(FIRST_FILE));
    let res = sidecar.get("/v1/secrets/app").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(res.text().await.unwrap(), FIRST_FILE, "HTTP serves what the file holds");
    assert_eq!(sidecar.get("/v1/secrets/app/REDIS_AUTH").await.text().await.unwrap(), "p@ss w0rd#1");
    assert_eq!(sidecar.get("/v1/secrets/app/PORT").await.text().await.unwrap(), "6379");

    // A reader polling the file throughout sees the whole old or the whole new file, never anything else.
    let reader = ContentReader::start(sidecar.dir().join("app.env"));
    rotate(&sm, "app/boot", SECOND).await;
    sidecar
        .wait_for("the rotated file", Duration::from_secs(15), async || {
            sidecar.read_file("app.env").as_deref() == Some(SECOND_FILE)
        })
        .await;
    let seen = reader.finish();
    assert_eq!(seen, [FIRST_FILE, SECOND_FILE].map(String::from).into_iter().collect(), "torn or missing reads");
    assert_eq!(sidecar.get("/v1/secrets/app").await.text().await.unwrap(), SECOND_FILE);
    assert_eq!(sidecar.get("/v1/secrets/app/REDIS_AUTH").await.text().await.unwrap(), r"it's C:\tmp #1");

    // A version with a key that is no variable name is rejected whole: the last good file stays.
    rotate(&sm, "app/boot", r#"{"SECRET_KEY_BASE":"third-never-written","redis-auth":"x"}"#).await;
    sidecar
        .wait_for("the rejection in health", Duration::from_secs(15), async || {
            matches!(sidecar.healthz().await, Some((200, h))
                if h["secrets"]["app"]["last_error"].as_str().is_some_and(|e| e.contains(r#"key "redis-auth" is not a valid variable name"#)))
        })
        .await;
    assert_eq!(sidecar.read_file("app.env").as_deref(), Some(SECOND_FILE));
    assert_eq!(sidecar.get("/v1/secrets/app").await.text().await.unwrap(), SECOND_FILE);
    let (_, health) = sidecar.healthz().await.unwrap();
    let log = sidecar.log_text();
    for text in [health.to_string(), log] {
        assert!(!text.contains("third-never-written") && !text.contains("tmp #1"), "a value leaked: {text}");
    }
    let names: Vec<_> = std::fs::read_dir(sidecar.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "app.env and .token, no temp file left: {names:?}");
}
