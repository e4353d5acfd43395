//! The types that hold secret material for as long as the sidecar keeps it: every version's value, its
//! file's bytes and its keys' answers, the HTTP token, a signed RDS IAM token. They print as redacted in
//! `Debug` and `Display`, so a stray `{:?}` in a log line or an error can never carry a password, and
//! they are zeroed when dropped.
//!
//! Parsing a secret's JSON (to check it, to render it as dotenv or a template, to answer its keys) makes
//! short-lived copies inside serde_json and minijinja that are freed without being zeroed; none of them
//! outlives the parse or render that made it.

use std::fmt;

use zeroize::Zeroizing;

/// Secret bytes: a SecretString's UTF-8 or a SecretBinary's bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }

    /// The bytes. Named so every use reads as deliberate.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        SecretValue::new(s.into_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

/// A secret text such as the HTTP token.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        SecretString(Zeroizing::new(s))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let v = SecretValue::from(r#"{"password":"correct-horse"}"#.to_owned());
        let s = SecretString::from("correct-horse".to_owned());
        for printed in [format!("{v:?}"), format!("{s:?}"), format!("{s}"), format!("{:?}", Some(&v))] {
            assert!(!printed.contains("correct-horse"), "{printed}");
        }
        assert_eq!(format!("{v:?}"), "SecretValue(<redacted, 28 bytes>)");
    }

    #[test]
    fn expose_gives_the_exact_bytes() {
        let v = SecretValue::new(vec![0, 159, 146, 150]);
        assert_eq!(v.expose(), &[0, 159, 146, 150]);
    }
}
