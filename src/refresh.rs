//! Asking an entry's task to look again: one registry of every task's message channel, so that
//! `POST /v1/secrets/NAME/refresh` means the same for a secret and for an `rds-iam://` token, and the
//! dev-file watcher wakes every secret the same way. HTTP asks here; it never knows which task answers.
//!
//! A refresh is a message with a reply channel: the task runs the check itself, so a caller that hangs
//! up (or an HTTP timeout) only stops the waiting, never a check half-way ([`crate::task`]).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// What a task is told.
#[derive(Debug)]
pub enum Message {
    /// A client's forced check; the answer goes back on the channel.
    Refresh(oneshot::Sender<Answer>),
    /// Check now, no gap (a dev-file edit).
    Wake,
}

/// The answer to a forced refresh, and what a check reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub version_id: Option<String>,
    /// Whether this call published a new version.
    pub changed: bool,
    /// False when the call fell inside the entry's minimum gap and the source was not asked.
    pub fetched: bool,
    pub rotation_in_progress: bool,
    /// The pending version served at `?stage=AWSPENDING`, if it could be read.
    pub pending_version_id: Option<String>,
}

/// The check failed, or the task has stopped. The task logged why and shows it in the entry's
/// `last_error`; the caller's answer stays generic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// What every caller sharing a check gets.
pub type Answer = Result<Report, Failed>;

/// Every task's channel, by entry name.
#[derive(Debug, Clone, Default)]
pub struct Refreshers(Arc<HashMap<String, mpsc::Sender<Message>>>);

impl Refreshers {
    pub fn new(channels: impl IntoIterator<Item = (String, mpsc::Sender<Message>)>) -> Self {
        Refreshers(Arc::new(channels.into_iter().collect()))
    }

    /// A check forced by a client; `None` for a name no task answers for (a template's). Dropping the
    /// future only stops waiting: the check runs to its end in the task.
    pub async fn refresh(&self, name: &str) -> Option<Answer> {
        let tx = self.0.get(name)?;
        let (reply, answer) = oneshot::channel();
        if tx.send(Message::Refresh(reply)).await.is_err() {
            return Some(Err(Failed));
        }
        Some(answer.await.unwrap_or(Err(Failed)))
    }

    /// Makes every task check now (the dev-file watcher, from its own thread).
    pub fn wake_all(&self) {
        for tx in self.0.values() {
            // A full queue already holds a check.
            let _ = tx.try_send(Message::Wake);
        }
    }
}
