//! RDS IAM auth tokens as secrets: one task per `rds-iam://` entry that signs a token
//! ([`crate::source::rds_iam`]) with the task's credentials, publishes it as `NAME.json` in the shape of an
//! RDS secret — `{"username", "password": <token>, "host", "port", "dbname"?, "expires_at"}` — so the Ruby
//! hook and every other client read it unchanged, and signs a new one before it expires.
//!
//! It runs the same task as a secret ([`crate::task`]): it owns its schedule and is the only writer of its
//! file and store entry; a forced refresh (`POST /v1/secrets/NAME/refresh`, what the hook calls after a
//! refused login) is a message it answers, so an HTTP client going away never cancels a signing half-way,
//! and file and store are written in one uninterruptible step ([`crate::publish::Outlet`]).
//!
//! When to sign again is `next_renewal`: every `--rds-iam-renew-interval` (10 minutes; a token lives 15),
//! and never later than [`RENEW_BEFORE_EXPIRY`] before the token's own expiry — which comes earlier when the
//! signing credentials (the task role's session) expire first. A failed signing (the credentials endpoint
//! unreachable) keeps the last token, which stays valid until its expiry, and is retried with backoff
//! ([`crate::backoff`]).
//! Signing is local: no AWS call, nothing counted against RDS's limit on new IAM connections, which is
//! about how often the app logs in, not how often a token is signed — one token serves the whole task.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::{backoff, unit_random};
use crate::entry::RdsIamSpec;
use crate::metrics::Metrics;
use crate::publish::{Outlet, PublishError};
use crate::refresh::Message;
use crate::secret::SecretValue;
use crate::source::rds_iam::{self, SignError, Target, Token};
use crate::store::{Version, View};
use crate::task::{self, CheckError, Producer, Services};

/// Sign again at the latest this long before the current token expires.
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(120);
/// A forced refresh within this long of the last signing answers with that token: a burst of refused
/// logins on every thread re-signs once.
pub const MIN_RESIGN_GAP: Duration = Duration::from_secs(1);
/// Retries after a failed signing: from FIRST_RETRY, doubling, at most MAX_RETRY apart.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

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
fn next_renewal(signed_at: Instant, lifetime: Duration, renew: Duration) -> Instant {
    let before_expiry = lifetime.saturating_sub(RENEW_BEFORE_EXPIRY);
    signed_at + renew.min(before_expiry).max(Duration::from_secs(1))
}

/// The wait before retry number `failures` (1 = the first retry) after a failed signing, `unit` the
/// jitter's draw.
fn retry_delay(failures: u32, unit: f64) -> Duration {
    backoff(failures.saturating_sub(1), FIRST_RETRY, MAX_RETRY, unit)
}

/// Starts one task per entry; returns their channels, for the refresh registry.
pub fn start(
    services: &Services,
    signer: Signer,
    renew: Duration,
    specs: &[RdsIamSpec],
) -> Vec<(String, mpsc::Sender<Message>)> {
    specs
        .iter()
        .map(|spec| {
            let entry = services.store.get(&spec.name).expect("every rds-iam entry has a store entry").clone();
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
                outlet: Outlet::new(services.publisher.clone(), entry.clone()),
                metrics: services.metrics.clone(),
                deadline: Instant::now(),
                last_signed: None,
                failures: 0,
            };
            task::spawn(task, entry, services, None)
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

struct TokenTask {
    spec: RdsIamSpec,
    target: Target,
    signer: Signer,
    renew: Duration,
    outlet: Outlet,
    metrics: Arc<Metrics>,
    /// The next signing.
    deadline: Instant,
    last_signed: Option<Instant>,
    failures: u32,
}

impl Producer for TokenTask {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn wake(&mut self, now: Instant) {
        self.deadline = now;
    }

    fn admit(&mut self, now: Instant) -> bool {
        self.last_signed.is_none_or(|at| now.saturating_duration_since(at) >= MIN_RESIGN_GAP)
    }

    fn check(&mut self) -> BoxFuture<'_, Result<bool, CheckError>> {
        Box::pin(async move {
            let lifetime = self.sign_and_publish().await.map_err(|e| CheckError::Token(e.to_string()))?;
            let now = Instant::now();
            self.last_signed = Some(now);
            self.deadline = next_renewal(now, lifetime, self.renew);
            Ok(true)
        })
    }

    fn checked(&mut self, now: Instant, _forced: bool, result: &Result<bool, CheckError>) -> Option<View> {
        match result {
            Ok(_) => self.failures = 0,
            Err(e) => {
                self.failures += 1;
                let retry = retry_delay(self.failures, unit_random());
                self.deadline = now + retry;
                tracing::warn!(secret = %self.spec.name, error = %e, retry_in = %humantime::format_duration(retry),
                    "signing an RDS IAM token failed; keeping the last token until it expires");
            }
        }
        None
    }
}

impl TokenTask {
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
        let expires_at = token.expires_at();
        let version_id = humantime::format_rfc3339_millis(now).to_string();
        let version = Arc::new(Version::token(version_id, self.render(&token), expires_at));
        self.outlet.publish(version).await?;
        self.metrics.token_expiry(&self.spec.name, expires_at);
        tracing::info!(secret = %self.spec.name, user = %self.target.user, host = %self.target.host,
            expires_at = %humantime::format_rfc3339_seconds(expires_at), "published a new RDS IAM token");
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
        let longest: Vec<u64> = (1..=7).map(|n| retry_delay(n, 1.0).as_secs()).collect();
        assert_eq!(longest, [1, 2, 4, 8, 16, 30, 30]);
        let shortest: Vec<f64> = (1..=7).map(|n| retry_delay(n, 0.0).as_secs_f64()).collect();
        assert_eq!(shortest, [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0], "jittered, never below half the step");
        assert_eq!(retry_delay(u32::MAX, 1.0), MAX_RETRY);
    }
}
