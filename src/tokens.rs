//! RDS IAM auth tokens as secrets: one task per `rds-iam://` entry that signs a token
//! ([`crate::source::rds_iam`]) with the task's credentials, publishes it as `NAME.json` in the shape of an
//! RDS secret — `{"username", "password": <token>, "host", "port", "dbname"?, "expires_at"}` — so the Ruby
//! hook and every other client read it unchanged, and signs a new one before it expires.
//!
//! Like a secret's task in [`crate::poller`], the task owns its schedule and is the only writer of its file
//! and store entry; a forced refresh (`POST /v1/secrets/NAME/refresh`, what the hook calls after a refused
//! login) is a message it answers, so an HTTP client going away never cancels a signing half-way, and file
//! and store are written in one uninterruptible step.
//!
//! When to sign again is [`next_renewal`]: every `--rds-iam-renew-interval` (10 minutes; a token lives 15),
//! and never later than [`RENEW_BEFORE_EXPIRY`] before the token's own expiry — which comes earlier when the
//! signing credentials (the task role's session) expire first. A failed signing (the credentials endpoint
//! unreachable) keeps the last token, which stays valid until its expiry, and is retried with backoff.
//! Signing is local: no AWS call, nothing counted against RDS's limit on new IAM connections, which is
//! about how often the app logs in, not how often a token is signed — one token serves the whole task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Format, RdsIamSpec, SecretSpec};
use crate::metrics::{CheckResult, Metrics};
use crate::poller::{CheckError, Command, RefreshReport};
use crate::publish::{PublishError, Publisher};
use crate::secret::SecretValue;
use crate::source::rds_iam::{self, SignError, Target, Token};
use crate::store::{Store, Version};

/// Sign again at the latest this long before the current token expires.
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(120);
/// A forced refresh within this long of the last signing answers with that token: a burst of refused
/// logins on every thread re-signs once.
pub const MIN_RESIGN_GAP: Duration = Duration::from_secs(1);
/// Retries after a failed signing: from FIRST_RETRY, doubling, at most MAX_RETRY apart.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
const QUEUE: usize = 64;

/// What a token task needs from the AWS side: the credentials chain and the SDK's region.
#[derive(Clone, Debug)]
pub struct Signer {
    pub credentials: SharedCredentialsProvider,
    pub default_region: String,
}

/// Why a signing failed. Never carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no AWS credentials to sign an RDS IAM token with: {0}")]
    Credentials(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// When to sign again after a token signed at `signed_at` that lives `lifetime` (until its own
/// expiry): after `renew`, but no later than [`RENEW_BEFORE_EXPIRY`] before it expires, and not sooner
/// than one second (a token whose credentials are about to expire would otherwise be re-signed in a loop;
/// the credentials chain refreshes them first).
pub fn next_renewal(signed_at: Instant, lifetime: Duration, renew: Duration) -> Instant {
    let before_expiry = lifetime.saturating_sub(RENEW_BEFORE_EXPIRY);
    signed_at + renew.min(before_expiry).max(Duration::from_secs(1))
}

/// The delay before retry number `failures` (1 = the first retry) after a failed signing.
pub fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_RETRY)
}

/// The store's record of an `rds-iam://` entry: served as JSON like any secret, its "secret id" the entry.
pub fn store_spec(spec: &RdsIamSpec) -> SecretSpec {
    SecretSpec {
        name: spec.name.clone(),
        secret_id: format!("rds-iam://{}@{}:{}", spec.user, spec.host, spec.port),
        format: Format::Json,
    }
}

/// Starts one task per entry on `tracker`; returns the channels [`crate::poller::Poller`] routes forced
/// refreshes through.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    specs: &[RdsIamSpec],
    signer: Signer,
    renew: Duration,
    store: Arc<Store>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> HashMap<String, mpsc::Sender<Command>> {
    specs
        .iter()
        .map(|spec| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let target = Target {
                host: spec.host.clone(),
                port: spec.port,
                user: spec.user.clone(),
                region: spec.region.clone().unwrap_or_else(|| signer.default_region.clone()),
            };
            let task = TokenTask {
                spec: spec.clone(),
                target,
                signer: signer.clone(),
                renew,
                store: store.clone(),
                publisher: publisher.clone(),
                metrics: metrics.clone(),
                current: None,
                failures: 0,
            };
            tracker.spawn(task.run(rx, cancel.clone()));
            (spec.name.clone(), tx)
        })
        .collect()
}

/// The file's content. The password is the token.
#[derive(Serialize)]
struct Published<'a> {
    username: &'a str,
    password: &'a str,
    host: &'a str,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    dbname: Option<&'a str>,
    expires_at: String,
}

struct Signed {
    version_id: String,
    at: Instant,
}

struct TokenTask {
    spec: RdsIamSpec,
    target: Target,
    signer: Signer,
    renew: Duration,
    store: Arc<Store>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    current: Option<Signed>,
    failures: u32,
}

impl TokenTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut deadline = Instant::now();
        loop {
            let mut waiters = Vec::new();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {}
                msg = rx.recv() => match msg {
                    None => return,
                    Some(Command::Wake) => deadline = Instant::now(),
                    Some(Command::Refresh(reply)) => {
                        let fresh = self.current.as_ref().is_some_and(|c| c.at.elapsed() < MIN_RESIGN_GAP);
                        self.metrics.forced(&self.spec.name, !fresh);
                        if fresh {
                            let _ = reply.send(Ok(self.report(false, false)));
                            continue;
                        }
                        waiters.push(reply);
                    }
                },
            }
            if waiters.is_empty() && deadline > Instant::now() {
                continue;
            }
            // Signed and published here, in the task: a caller that hangs up cancels nothing.
            let result = self.sign_and_publish().await;
            let answer = match result {
                Ok(lifetime) => {
                    self.failures = 0;
                    self.metrics.check(&self.spec.name, CheckResult::changed);
                    let now = Instant::now();
                    deadline = next_renewal(now, lifetime, self.renew);
                    self.record(None);
                    Ok(self.report(true, true))
                }
                Err(e) => {
                    self.failures += 1;
                    self.metrics.check(&self.spec.name, CheckResult::error);
                    let retry = retry_delay(self.failures);
                    deadline = Instant::now() + retry;
                    tracing::warn!(secret = %self.spec.name, error = %e,
                        retry_in = %humantime::format_duration(retry),
                        "signing an RDS IAM token failed; keeping the last token until it expires");
                    self.record(Some(e.to_string()));
                    Err(Arc::new(CheckError::Token(e.to_string())))
                }
            };
            for waiter in waiters {
                let _ = waiter.send(answer.clone());
            }
        }
    }

    /// Signs a token and publishes it: the file, then the store, in one blocking step. Returns how long
    /// the token lives from now.
    async fn sign_and_publish(&mut self) -> Result<Duration, TokenError> {
        let credentials = self
            .signer
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| TokenError::Credentials(credentials_error(&e)))?;
        let now = SystemTime::now();
        let token = rds_iam::presign(&self.target, &credentials, now)?;
        let value = self.render(&token);
        let version_id = humantime::format_rfc3339_millis(now).to_string();
        let version = Arc::new(Version::new(version_id.clone(), value, now));
        let expires_at = token.expires_at();
        let (publisher, store, file_name, name) =
            (self.publisher.clone(), self.store.clone(), self.spec.file_name(), self.spec.name.clone());
        tokio::task::spawn_blocking(move || {
            let outcome = publisher.publish(&file_name, version.value.expose())?;
            store.update(&name, |s| {
                s.current = Some(version);
                s.expires_at = Some(expires_at);
            });
            store.changes().published(&name, outcome);
            Ok::<_, PublishError>(())
        })
        .await
        .expect("publish task does not panic")?;
        self.metrics.token_expiry(&self.spec.name, expires_at);
        tracing::info!(secret = %self.spec.name, user = %self.target.user, host = %self.target.host,
            expires_at = %humantime::format_rfc3339_seconds(expires_at), "published a new RDS IAM token");
        self.current = Some(Signed { version_id, at: Instant::now() });
        Ok(expires_at.duration_since(now).unwrap_or_default())
    }

    fn render(&self, token: &Token) -> SecretValue {
        let body = Published {
            username: &self.target.user,
            password: token.value().expose(),
            host: &self.target.host,
            port: self.target.port,
            dbname: self.spec.dbname.as_deref(),
            expires_at: humantime::format_rfc3339_seconds(token.expires_at()).to_string(),
        };
        SecretValue::new(serde_json::to_vec(&body).expect("a struct of strings serializes"))
    }

    fn record(&self, error: Option<String>) {
        self.store.update(&self.spec.name, |s| match error {
            None => {
                s.last_success = Some((Instant::now(), SystemTime::now()));
                s.last_error = None;
            }
            Some(e) => s.last_error = Some(e),
        });
    }

    fn report(&self, changed: bool, fetched: bool) -> RefreshReport {
        RefreshReport {
            name: self.spec.name.clone(),
            version_id: self.current.as_ref().map(|c| c.version_id.clone()),
            changed,
            fetched,
            rotation_in_progress: false,
            pending_version_id: None,
        }
    }
}

/// The credentials error's own text and its causes: they name the provider and the reason (an
/// unreachable endpoint, an expired session), never a key.
fn credentials_error(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_every_interval_while_the_token_outlives_it() {
        let t0 = Instant::now();
        let ten = Duration::from_secs(600);
        assert_eq!(next_renewal(t0, Duration::from_secs(900), ten), t0 + ten);
    }

    #[test]
    fn renewal_comes_before_credentials_that_expire_sooner() {
        let t0 = Instant::now();
        let ten = Duration::from_secs(600);
        // Session credentials expire in 5 minutes: the token does too, so it is renewed 2 minutes before.
        assert_eq!(next_renewal(t0, Duration::from_secs(300), ten), t0 + Duration::from_secs(180));
        // Expiring within the margin: renewed in a second, not in a busy loop.
        assert_eq!(next_renewal(t0, Duration::from_secs(30), ten), t0 + Duration::from_secs(1));
    }

    #[test]
    fn a_test_sized_interval_is_kept_as_it_is() {
        let t0 = Instant::now();
        assert_eq!(next_renewal(t0, Duration::from_secs(900), Duration::from_secs(2)), t0 + Duration::from_secs(2));
    }

    #[test]
    fn failed_signings_back_off_from_one_second_to_thirty() {
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn the_store_serves_an_entry_as_json_under_its_name() {
        let spec = RdsIamSpec {
            name: "db".into(),
            user: "app".into(),
            host: "h.internal".into(),
            port: 5432,
            region: None,
            dbname: None,
        };
        let s = store_spec(&spec);
        assert_eq!(
            (s.name.as_str(), s.secret_id.as_str(), s.format),
            ("db", "rds-iam://app@h.internal:5432", Format::Json)
        );
        assert_eq!(s.file_name(), "db.json");
    }
}
