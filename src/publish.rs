//! Atomic publication of files on the shared volume.
//!
//! A reader that opens a published path at any moment gets the whole old or the whole new content, never a
//! mix and never an empty file (docs/secrets-manager.md, "Publishing"): the new content goes to a uniquely
//! named temp file in the same directory, created with `O_EXCL` and given its final mode and owner *before*
//! the first byte is written (so a secret is never readable by the wrong uid, not even for a moment), then
//! fsync, rename over the target, and fsync of the directory so the rename survives a crash.
//!
//! Temp files carry [`TEMP_PREFIX`]; whatever an earlier crash left behind is removed by [`Publisher::prepare`].
//! A failed write removes its own temp file, so no secret is left lying around under another name.
//!
//! Every producer — a secret's task, a token's, a template's — publishes a version the same way, through
//! its [`Outlet`]: the file, then the store entry, then the entry's change counter, in one blocking task
//! that runs to its end even if the producer is dropped. So HTTP never serves a version the file does
//! not have, readiness means "the file exists", and a listener woken by the counter reads both new.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Entry, Version};

/// Prefix of every temp file. A dot-file, so an app that globs `*.json` never picks one up, and distinct
/// from every valid secret name (those start with an alphanumeric character).
pub const TEMP_PREFIX: &str = ".secrets-sidecar-tmp-";

/// Owner and mode of every file written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("output directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("output directory {path} is not writable: {source}{hint}", hint = permission_hint(source))]
    NotWritable { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}{hint}", hint = permission_hint(source))]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "setting owner {uid:?}:{gid:?} on {path}: {source} (the sidecar must run as root to give files another owner)"
    )]
    Chown { path: PathBuf, uid: Option<u32>, gid: Option<u32>, source: io::Error },
}

/// The usual cause on ECS, said where it is seen: the volume's directory is not the sidecar's.
fn permission_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (the output directory must be writable by the sidecar's uid: on Fargate the image creates /secrets \
         owned by 65532, see docs/ecs.md)"
    } else {
        ""
    }
}

/// What [`Publisher::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// The file already held exactly these bytes with the right mode: left untouched so that file
    /// watchers do not fire (a restarted sidecar finds its own earlier files).
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Publisher {
    dir: PathBuf,
    options: FileOptions,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Publisher {
    pub fn new(dir: PathBuf, options: FileOptions) -> Self {
        Publisher { dir, options }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks that the directory exists and removes temp files left by an earlier crash.
    /// Returns how many were removed.
    pub fn prepare(&self) -> Result<usize, PublishError> {
        let dir_err = |source| PublishError::Dir { path: self.dir.clone(), source };
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                fs::remove_file(entry.path()).map_err(dir_err)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Proves the directory writable by creating and removing a probe file, so a directory the sidecar
    /// cannot write fails at start (exit 1) instead of leaving a running sidecar that never publishes
    /// (with `--token`, nothing else is written at start). Blocking.
    pub fn check_writable(&self) -> Result<(), PublishError> {
        let err = |source| PublishError::NotWritable { path: self.dir.clone(), source };
        let probe = self.dir.join(format!("{TEMP_PREFIX}probe-{}", std::process::id()));
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe).map_err(err)?;
        fs::remove_file(&probe).map_err(err)
    }

    /// Publishes `content` as `DIR/file_name`, atomically. Blocking: call from `spawn_blocking`.
    pub fn publish(&self, file_name: &str, content: &[u8]) -> Result<Outcome, PublishError> {
        let target = self.dir.join(file_name);
        if self.already_published(&target, content) {
            return Ok(Outcome::Unchanged);
        }
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{file_name}-{}-{}-{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        let result = self.write_temp(&temp, &target, content).and_then(|()| {
            fs::rename(&temp, &target).map_err(|source| PublishError::Write { path: target.clone(), source })
        });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result?;
        // The rename is what readers see; this fsync only makes it durable. Failing it is reported but the
        // new file is already in place.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| PublishError::Dir { path: self.dir.clone(), source })?;
        Ok(Outcome::Written)
    }

    /// Errors name `target`: the temp file's name means nothing to whoever reads the log.
    fn write_temp(&self, temp: &Path, target: &Path, content: &[u8]) -> Result<(), PublishError> {
        let werr = |source| PublishError::Write { path: target.to_path_buf(), source };
        // 0o600 at creation whatever the umask; the final mode is set below, still before any byte.
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(temp).map_err(werr)?;
        if self.options.uid.is_some() || self.options.gid.is_some() {
            std::os::unix::fs::fchown(&file, self.options.uid, self.options.gid).map_err(|source| {
                PublishError::Chown { path: target.to_path_buf(), uid: self.options.uid, gid: self.options.gid, source }
            })?;
        }
        // fchmod, not the creation mode: the umask does not apply, so the mode is exactly --file-mode.
        file.set_permissions(fs::Permissions::from_mode(self.options.mode)).map_err(werr)?;
        file.write_all(content).map_err(werr)?;
        file.sync_all().map_err(werr)?;
        Ok(())
    }

    fn already_published(&self, target: &Path, content: &[u8]) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = fs::symlink_metadata(target) else { return false };
        let owner_ok =
            self.options.uid.is_none_or(|u| u == meta.uid()) && self.options.gid.is_none_or(|g| g == meta.gid());
        meta.is_file()
            && meta.mode() & 0o7777 == self.options.mode
            && owner_ok
            && meta.len() == content.len() as u64
            // The old file holds a secret too: zeroed when the comparison is done, like every value.
            && fs::read(target).map(zeroize::Zeroizing::new).is_ok_and(|old| *old == content)
    }
}

/// One entry's way out: its file in the output directory and its entry in the store.
#[derive(Debug, Clone)]
pub struct Outlet {
    publisher: Publisher,
    entry: Arc<Entry>,
}

impl Outlet {
    pub fn new(publisher: Publisher, entry: Arc<Entry>) -> Self {
        Outlet { publisher, entry }
    }

    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// The file, for logs.
    pub fn path(&self) -> PathBuf {
        self.publisher.dir().join(self.entry.file_name())
    }

    /// Writes `version`'s content to the entry's file, then makes it the entry's current version, then
    /// raises the entry's change counter. Once started, the step completes even if this future is dropped.
    pub async fn publish(&self, version: Arc<Version>) -> Result<Outcome, PublishError> {
        let Outlet { publisher, entry } = self.clone();
        tokio::task::spawn_blocking(move || {
            // The publisher leaves a file alone when its bytes are already these, so a new version whose
            // file is byte-identical (format=env: the same keys and values) does not touch it.
            let outcome = publisher.publish(&entry.file_name(), version.content().expose())?;
            entry.publish(version, outcome == Outcome::Written);
            Ok(outcome)
        })
        .await
        .expect("publish task does not panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn publisher(dir: &Path, mode: u32) -> Publisher {
        Publisher::new(dir.to_path_buf(), FileOptions { mode, uid: None, gid: None })
    }

    #[test]
    fn publish_writes_content_with_the_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = publisher(dir.path(), 0o440);
        assert_eq!(p.publish("db.json", b"{\"a\":1}").unwrap(), Outcome::Written);
        let meta = fs::metadata(dir.path().join("db.json")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o440);
        assert_eq!(fs::read(dir.path().join("db.json")).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn replacing_a_read_only_file_works_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = publisher(dir.path(), 0o400);
        p.publish("db.json", b"one").unwrap();
        p.publish("db.json", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("db.json")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["db.json"]);
    }

    #[test]
    fn identical_content_does_not_touch_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = publisher(dir.path(), 0o440);
        p.publish("db.json", b"same").unwrap();
        let ino = fs::metadata(dir.path().join("db.json")).unwrap().ino();
        assert_eq!(p.publish("db.json", b"same").unwrap(), Outcome::Unchanged);
        assert_eq!(fs::metadata(dir.path().join("db.json")).unwrap().ino(), ino);
        // Negative control: a different mode is a reason to write.
        assert_eq!(publisher(dir.path(), 0o444).publish("db.json", b"same").unwrap(), Outcome::Written);
    }

    #[test]
    fn prepare_removes_only_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{TEMP_PREFIX}db.json-1-0-abc")), "old secret").unwrap();
        fs::write(dir.path().join("db.json"), "keep").unwrap();
        fs::write(dir.path().join(".token"), "keep").unwrap();
        assert_eq!(publisher(dir.path(), 0o440).prepare().unwrap(), 1);
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [".token", "db.json"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = publisher(dir.path(), 0o440);
        p.publish("db.json", b"old").unwrap();
        // A directory where the target is makes the rename fail after the temp file was written.
        let blocked = publisher(dir.path(), 0o440);
        fs::create_dir(dir.path().join("blocked")).unwrap();
        fs::write(dir.path().join("blocked/x"), "").unwrap();
        assert!(blocked.publish("blocked", b"new").is_err());
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["blocked", "db.json"]);
        assert_eq!(fs::read(dir.path().join("db.json")).unwrap(), b"old");
    }

    #[test]
    fn a_permission_error_names_the_target_and_the_usual_fix() {
        let denied = PublishError::Write {
            path: PathBuf::from("/secrets/db.json"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let msg = denied.to_string();
        assert!(msg.starts_with("writing /secrets/db.json: permission denied"), "{msg}");
        assert!(msg.contains("writable by the sidecar's uid"), "{msg}");
        // Other errors get no misleading hint.
        let full =
            PublishError::Write { path: PathBuf::from("/secrets/db.json"), source: io::Error::from_raw_os_error(28) };
        assert!(!full.to_string().contains("writable"), "{full}");
    }

    /// A directory this process cannot create files in: root ignores mode bits, but not sysfs.
    fn unwritable_dir() -> (Option<tempfile::TempDir>, PathBuf) {
        if is_root() {
            return (None, PathBuf::from("/sys"));
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        let path = dir.path().to_path_buf();
        (Some(dir), path)
    }

    fn is_root() -> bool {
        fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }

    #[test]
    fn the_writability_probe_fails_on_an_unwritable_directory_and_leaves_nothing() {
        let (_keep, path) = unwritable_dir();
        let err = publisher(&path, 0o440).check_writable().unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("output directory {} is not writable", path.display())), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        publisher(dir.path(), 0o440).check_writable().unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the probe file is removed");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = publisher(Path::new("/nonexistent/secrets"), 0o440).prepare().unwrap_err();
        assert!(err.to_string().starts_with("output directory /nonexistent/secrets"), "{err}");
    }
}
