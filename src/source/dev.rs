//! `--dev-secrets FILE`: a JSON object `{NAME: value, …}` standing in for Secrets Manager, so the demo and
//! a team's local Rails setup need no AWS account and no emulator.
//!
//! The file is read on every check, and [`watch`] turns each edit into an immediate refresh, so an edit
//! travels the same path as a rotation (poller → file, then store → HTTP). A value that is a JSON string is
//! the SecretString as is; any other JSON value is serialised compactly. The version id is a hash of the
//! value, so an edit that changes nothing publishes nothing.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{FetchError, Fetched, Labels};
use crate::entry::SecretSpec;
use crate::secret::SecretValue;

pub struct DevSource {
    path: PathBuf,
}

impl DevSource {
    pub fn new(path: PathBuf) -> Self {
        DevSource { path }
    }

    /// The names in the file, for a dev run given no `--secret`.
    pub fn names(&self) -> Result<Vec<String>, FetchError> {
        Ok(self.read()?.into_iter().map(|(k, _)| k).collect())
    }

    fn read(&self) -> Result<serde_json::Map<String, serde_json::Value>, FetchError> {
        let text = std::fs::read(&self.path)
            .map_err(|e| FetchError::DevFile(format!("cannot read {}: {e}", self.path.display())))?;
        // serde_json's error names line and column only, never the text around it.
        match serde_json::from_slice(&text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(FetchError::DevFile(format!("{} is not a JSON object", self.path.display()))),
            Err(e) => Err(FetchError::DevFile(format!("{} is not valid JSON: {e}", self.path.display()))),
        }
    }

    /// Looks the secret up by NAME, then by SECRET_ID.
    fn value(&self, spec: &SecretSpec) -> Result<Fetched, FetchError> {
        let map = self.read()?;
        let value = map.get(&spec.name).or_else(|| map.get(&spec.secret_id)).ok_or(FetchError::NotFound)?;
        let bytes = match value {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => serde_json::to_vec(other).expect("a parsed JSON value serialises"),
        };
        if bytes.is_empty() {
            return Err(FetchError::EmptyValue);
        }
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        Ok(Fetched { version_id: format!("dev-{:016x}", h.finish()), value: SecretValue::new(bytes), binary: false })
    }

    pub fn describe(&self, spec: &SecretSpec) -> Result<Labels, FetchError> {
        Ok(Labels { current: self.value(spec)?.version_id, pending: None })
    }

    pub fn get_version(&self, spec: &SecretSpec, version_id: &str) -> Result<Fetched, FetchError> {
        let fetched = self.value(spec)?;
        if fetched.version_id != version_id {
            // Edited between describe and get: the next check picks up the newer edit.
            return Err(FetchError::DevFile("changed while being read".into()));
        }
        Ok(fetched)
    }

    pub fn get_current(&self, spec: &SecretSpec) -> Result<Fetched, FetchError> {
        self.value(spec)
    }
}

/// Calls `on_change` after every change to `path`. The parent directory is watched, not the file: editors
/// and `mv` replace a file by renaming over it, and a watch on the old inode would go quiet.
pub fn watch(path: &Path, on_change: impl Fn() + Send + 'static) -> notify::Result<RecommendedWatcher> {
    let name = path.file_name().map(|n| n.to_owned());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
            && !event.kind.is_access()
        {
            on_change();
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Format;

    fn spec(name: &str, id: &str) -> SecretSpec {
        SecretSpec::new(name, id, Format::Json)
    }

    #[test]
    fn objects_are_serialised_and_strings_kept_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        std::fs::write(&path, r#"{"db": {"username": "app", "port": 3306}, "raw": "line\n"}"#).unwrap();
        let src = DevSource::new(path);
        assert_eq!(src.get_current(&spec("db", "x")).unwrap().value.expose(), br#"{"username":"app","port":3306}"#);
        assert_eq!(src.get_current(&spec("other", "raw")).unwrap().value.expose(), b"line\n");
        assert_eq!(src.get_current(&spec("nope", "nope")).unwrap_err(), FetchError::NotFound);
    }

    #[test]
    fn version_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        std::fs::write(&path, r#"{"db": {"password": "a"}}"#).unwrap();
        let src = DevSource::new(path.clone());
        let v1 = src.describe(&spec("db", "db")).unwrap().current;
        std::fs::write(&path, r#"{ "db" : { "password" : "a" } }"#).unwrap();
        assert_eq!(src.describe(&spec("db", "db")).unwrap().current, v1, "whitespace is not a new version");
        std::fs::write(&path, r#"{"db": {"password": "b"}}"#).unwrap();
        assert_ne!(src.describe(&spec("db", "db")).unwrap().current, v1);
    }

    #[test]
    fn invalid_json_is_an_error_that_quotes_no_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        std::fs::write(&path, r#"{"db": {"password": "s3cr3t-value""#).unwrap();
        let err = DevSource::new(path).describe(&spec("db", "db")).unwrap_err();
        assert!(matches!(&err, FetchError::DevFile(m) if m.contains("not valid JSON")), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
