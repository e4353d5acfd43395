//! Rendering a JSON secret as a dotenv file (`format=env`): one `KEY=value` line per top-level key, in the
//! order of the JSON object. A pure function of the value; the poller publishes what it returns.
//!
//! # The quoting, and why
//! The file is read by parsers that agree on little: POSIX `sh` sourcing (`set -a; . FILE`), Ruby's `dotenv`
//! (Debian 12 ships 2.4: it splits the file into lines before parsing, runs `$(…)` and expands `$VAR` in
//! double quotes and bare values, and unescapes `\X` in double quotes), python-dotenv 1.2 (expands `${X}`
//! in single quotes too unless `interpolate=False`, and reads `\\` and `\'` as escapes even in single
//! quotes), systemd's `EnvironmentFile` (single quotes literal, `\"`, `\\`, `` \` ``, `\$` in double
//! quotes) and Docker's `--env-file` (no quoting at all: everything after the first `=` is the value).
//! Each value gets the first of these forms that sh, Ruby dotenv 2.4 and python-dotenv (with
//! `interpolate=False`) all read back exactly — the property tests in `tests/it/env_format.rs` run the
//! three real parsers over arbitrary values:
//!
//! 1. **bare** when every character is in `A-Za-z0-9_./:@%+,=-` (or the value is empty): no parser
//!    gives any of them a meaning, and it is the only form Docker's `--env-file` reads back exactly;
//! 2. **single quotes** `'…'` when the value has no `'`, no `\\` and does not end in `\`: literal in sh,
//!    Ruby and systemd; python-dotenv would turn `\\` into `\` and read a final `\'` as an escaped quote;
//! 3. **double quotes** `"…"` with each `\` written `\\` and each `"` written `\"` — the two escapes sh,
//!    Ruby and python-dotenv all undo — when the value has neither `$` nor `` ` `` (special in some parser's
//!    double quotes, with no escape that all of them undo: Ruby and sh take `\$`, python-dotenv keeps the
//!    backslash) and no `\n`/`\r` pair (Ruby turns them into line breaks before unescaping): for values
//!    with `'` or awkward backslashes, `"` included, e.g. `A="dq\" and sq' mixed"`;
//! 4. otherwise the value is **refused** with the key named, never written in a form one consumer
//!    misreads: a value that needs double quotes (a `'`, `\\` or a final `\`) and holds a `$`, a `` ` ``
//!    or a `\n`/`\r` pair. So are values with a line break (Ruby 2.4 reads the continuation line as a line
//!    of its own, which may set another variable) or a NUL (no environment can hold it).
//!
//! Key names must be variable names (`[A-Za-z_][A-Za-z0-9_]*`); any other is refused, never mangled.
//! Values that are not JSON strings are written as their JSON text (`3306`, `true`, `null`, `{"a":1}`),
//! the form `GET /v1/secrets/NAME/KEY` answers.

use std::fmt;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// Why a secret cannot be rendered. Names a key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("key {0:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    BadKey(String),
    #[error("the value of key {key:?} {problem}")]
    Unportable { key: String, problem: Unportable },
}

/// What no quoting can carry to every consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unportable {
    /// `\n` or `\r`.
    LineBreak,
    Nul,
    /// A `'` or an awkward backslash, together with `$`, `` ` `` or a `\n`/`\r` pair.
    Mixed,
}

impl fmt::Display for Unportable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unportable::LineBreak => {
                "contains a line break, which Ruby's dotenv 2.4 and Docker cannot read (use format=json or raw)"
            }
            Unportable::Nul => "contains a NUL character, which no environment variable can hold",
            Unportable::Mixed => {
                "contains a ' (or \\\\, or a final \\) together with $, ` or a \\n or \\r pair: no quoting \
                 reads back the same in sh, Ruby dotenv and python-dotenv (use format=json, or exclude these \
                 characters from generated values)"
            }
        })
    }
}

/// The form a value is written in (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Bare,
    Single,
    Double,
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name every consumer accepts as a variable.
pub fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./:@%+,=-".contains(c)
}

/// The form `value` is written in, or why it cannot be.
pub fn quoting(value: &str) -> Result<Quoting, Unportable> {
    if value.contains('\0') {
        return Err(Unportable::Nul);
    }
    if value.contains(['\n', '\r']) {
        return Err(Unportable::LineBreak);
    }
    if value.chars().all(bare_char) {
        return Ok(Quoting::Bare);
    }
    if !value.contains('\'') && !value.contains("\\\\") && !value.ends_with('\\') {
        return Ok(Quoting::Single);
    }
    if !value.contains(['$', '`']) && !value.contains("\\n") && !value.contains("\\r") {
        return Ok(Quoting::Double);
    }
    Err(Unportable::Mixed)
}

/// Appends `value` to `out` in its form.
fn push_value(out: &mut String, value: &str) -> Result<(), Unportable> {
    match quoting(value)? {
        Quoting::Bare => out.push_str(value),
        Quoting::Single => {
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        }
        Quoting::Double => {
            out.push('"');
            for c in value.chars() {
                if c == '\\' || c == '"' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    Ok(())
}

/// The dotenv file for `object`: `KEY=value\n` per key, in the object's order. Every key is checked
/// before anything is returned, so a secret is rendered whole or not at all.
pub fn render(object: &Map<String, Value>) -> Result<Zeroizing<String>, EnvError> {
    // Room for the worst case of every string value (each `\` doubled, two quotes), so the buffer is not
    // reallocated: a reallocation would leave an unzeroed copy of what was written so far.
    let room = object.iter().map(|(k, v)| k.len() + 4 + if let Value::String(s) = v { 2 * s.len() } else { 64 }).sum();
    let mut out = Zeroizing::new(String::with_capacity(room));
    for (key, value) in object {
        if !valid_key(key) {
            return Err(EnvError::BadKey(key.clone()));
        }
        out.push_str(key);
        out.push('=');
        let text;
        let value = match value {
            Value::String(s) => s.as_str(),
            other => {
                text = Zeroizing::new(other.to_string());
                text.as_str()
            }
        };
        push_value(&mut out, value).map_err(|problem| EnvError::Unportable { key: key.clone(), problem })?;
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(value: &str) -> Result<String, EnvError> {
        let mut m = Map::new();
        m.insert("K".into(), Value::String(value.into()));
        render(&m).map(|s| s.to_string())
    }

    #[test]
    fn awkward_values_get_exactly_these_lines() {
        for (value, line) in [
            ("", "K=\n"),
            ("abc123", "K=abc123\n"),
            ("postgres://u@h:5432/db", "K=postgres://u@h:5432/db\n"),
            ("dGVzdA==", "K=dGVzdA==\n"),
            ("=x", "K==x\n"),
            ("a b", "K='a b'\n"),
            (" lead and trail ", "K=' lead and trail '\n"),
            ("x#y", "K='x#y'\n"),
            ("a #b", "K='a #b'\n"),
            ("$HOME", "K='$HOME'\n"),
            ("${HOME}", "K='${HOME}'\n"),
            ("$(id)", "K='$(id)'\n"),
            ("`id`", "K='`id`'\n"),
            (r#"say "hi""#, "K='say \"hi\"'\n"),
            (r"C:\path", "K='C:\\path'\n"),
            ("tab\there", "K='tab\there'\n"),
            ("~user", "K='~user'\n"),
            ("héllo €😀", "K='héllo €😀'\n"),
            ("it's", "K=\"it's\"\n"),
            ("'", "K=\"'\"\n"),
            (r"a\\b", "K=\"a\\\\\\\\b\"\n"),
            (r"ends\", "K=\"ends\\\\\"\n"),
            (r"it's C:\dir", "K=\"it's C:\\\\dir\"\n"),
            (r#"dq" and sq' mixed"#, "K=\"dq\\\" and sq' mixed\"\n"),
            (r#"it's "quoted""#, "K=\"it's \\\"quoted\\\"\"\n"),
            (r#"a\\b""#, "K=\"a\\\\\\\\b\\\"\"\n"),
            (r#"'\""#, "K=\"'\\\\\\\"\"\n"),
        ] {
            assert_eq!(one(value).unwrap(), line, "value {value:?}");
        }
    }

    #[test]
    fn what_no_quoting_carries_is_refused_naming_the_key_only() {
        for (value, problem) in [
            ("line1\nline2", Unportable::LineBreak),
            ("cr\r", Unportable::LineBreak),
            ("nul\0", Unportable::Nul),
            ("it's $5", Unportable::Mixed),
            ("it's \"$5\"", Unportable::Mixed),
            ("it's `x`", Unportable::Mixed),
            (r"a\\b$c", Unportable::Mixed),
            (r"it's a \new day", Unportable::Mixed),
        ] {
            let err = one(value).unwrap_err();
            assert_eq!(err, EnvError::Unportable { key: "K".into(), problem }, "value {value:?}");
            let text = err.to_string();
            assert!(text.starts_with("the value of key \"K\" "), "{text}");
            assert!(!text.contains(value), "the message must not quote the value: {text}");
        }
    }

    #[test]
    fn keys_must_be_variable_names() {
        for key in ["9lives", "bad-key", "a.b", "", "with space", "ünï", "$X"] {
            let mut m = Map::new();
            m.insert("GOOD".into(), Value::String("v".into()));
            m.insert(key.into(), Value::String("secret-value".into()));
            let err = render(&m).unwrap_err();
            assert_eq!(err, EnvError::BadKey(key.into()));
            assert!(!err.to_string().contains("secret-value"));
        }
        for key in ["_", "_x", "A1", "snake_case", "SECRET_KEY_BASE"] {
            assert!(valid_key(key), "{key}");
        }
    }

    #[test]
    fn keys_keep_the_json_order_and_other_values_are_json_text() {
        let json = br#"{"Z":"last?","A":1,"port":5432,"ssl":true,"none":null,"list":[1,"x"],"obj":{"k":"v"},"f":1.5}"#;
        let out = render(&serde_json::from_slice(json).unwrap()).unwrap();
        assert_eq!(
            out.as_str(),
            "Z='last?'\nA=1\nport=5432\nssl=true\nnone=null\nlist='[1,\"x\"]'\nobj='{\"k\":\"v\"}'\nf=1.5\n"
        );
        assert_eq!(render(&Map::new()).unwrap().as_str(), "");
    }

    proptest! {
        /// What docs/boot-secrets.md promises is never refused: no line break or NUL, and no `'` or backslash.
        #[test]
        fn values_without_line_breaks_quotes_or_backslashes_are_always_written(value in "[^\n\r\0'\\\\]{0,40}") {
            prop_assert!(quoting(&value).is_ok());
        }

        /// Nor are values with quotes of both kinds or backslashes when they have neither `$` nor `` ` ``,
        /// unless they need double quotes (a `'`, `\\` or final `\`) and hold a `\n` or `\r` pair.
        #[test]
        fn values_with_quotes_or_backslashes_but_no_shell_specials_are_written(value in "[^\n\r\0$`]{0,40}") {
            let needs_double = value.contains('\'') || value.contains("\\\\") || value.ends_with('\\');
            let pairs = value.contains("\\n") || value.contains("\\r");
            prop_assert_eq!(quoting(&value).is_ok(), !(needs_double && pairs));
        }

        /// A bare or single-quoted value is the value itself between the delimiters: nothing is escaped; in
        /// double quotes only `\` and `"` are.
        #[test]
        fn only_double_quotes_escape_anything(value in "\\PC{0,40}") {
            if let Ok(line) = one(&value) {
                let body = line.strip_prefix("K=").unwrap().strip_suffix('\n').unwrap();
                match quoting(&value).unwrap() {
                    Quoting::Bare => prop_assert_eq!(body, value.as_str()),
                    Quoting::Single => prop_assert_eq!(body, format!("'{value}'")),
                    Quoting::Double => {
                        prop_assert_eq!(body, format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
                    }
                }
            }
        }
    }
}
