//! Where secret values come from: Secrets Manager ([`aws`]) or, for local development, a JSON file
//! ([`dev`]). Both answer the same three questions, so the refresh logic in [`crate::poller`] exists once:
//! which version carries each label ([`Source::describe`]), the value of one version
//! ([`Source::get_version`]), and the value of whatever is `AWSCURRENT` ([`Source::get_current`], the
//! fallback when `DescribeSecret` is not allowed). Each question is asked of the secret in its own Region,
//! or of its replica ([`crate::entry::Replica`]); a dev file has no Regions and no replicas (the
//! configuration refuses them).

pub(crate) mod aws;
pub(crate) mod dev;
pub mod rds_iam;

use crate::entry::{Replica, SecretSpec};
use crate::secret::SecretValue;

pub(crate) use aws::AwsSource;
pub use aws::SetupError;
pub(crate) use dev::DevSource;

pub const AWSCURRENT: &str = "AWSCURRENT";
pub const AWSPENDING: &str = "AWSPENDING";

/// Which versions carry the labels that matter, as `DescribeSecret` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// The version that carries `AWSCURRENT`.
    pub current: String,
    /// A version that carries `AWSPENDING` but not `AWSCURRENT`: a rotation is under way
    /// (docs/secrets-manager.md, "Rotation steps").
    pub pending: Option<String>,
}

impl Labels {
    /// Reads `VersionIdsToStages`. `None` when no version carries `AWSCURRENT` (a secret created without a
    /// value). On AWS a label is on at most one version; should two carry `AWSCURRENT` (moto, after a plain
    /// PutSecretValue on a rotated secret) the smallest id wins, so the choice is at least stable.
    pub fn from_stages<'a, I, S>(versions: I) -> Option<Labels>
    where
        I: IntoIterator<Item = (&'a String, S)>,
        S: AsRef<[String]>,
    {
        let mut current: Option<&String> = None;
        let mut pending_candidates = Vec::new();
        for (id, stages) in versions {
            let stages = stages.as_ref();
            let is_current = stages.iter().any(|s| s == AWSCURRENT);
            if is_current && current.is_none_or(|c| id < c) {
                current = Some(id);
            }
            if stages.iter().any(|s| s == AWSPENDING) && !is_current {
                pending_candidates.push(id);
            }
        }
        let current = current?.clone();
        let pending = pending_candidates.into_iter().min().cloned();
        Some(Labels { current, pending })
    }
}

/// One version's value.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub version_id: String,
    pub value: SecretValue,
    /// Whether the value came from `SecretBinary` rather than `SecretString`.
    pub binary: bool,
}

/// The Secrets Manager operation a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    DescribeSecret,
    GetSecretValue,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::DescribeSecret => "DescribeSecret",
            Operation::GetSecretValue => "GetSecretValue",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a source could not answer. `Display` texts go into logs and `/healthz`, so they carry the reason
/// and the AWS error code, never a value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("secret not found (deleted, never created, or not visible to this role)")]
    NotFound,
    #[error("access denied for {operation} (check the task role's policy)")]
    AccessDenied { operation: Operation },
    /// The credentials themselves were refused (unknown, invalid or expired key), not the action: says
    /// nothing about the policy, so it never changes how a secret is checked.
    #[error("credentials refused by Secrets Manager ({code}): invalid or expired keys, or being refreshed")]
    InvalidCredentials { code: String },
    /// The SDK could not get credentials at all — the task role's credentials endpoint down or refusing,
    /// or nothing configured — so no request reached Secrets Manager.
    #[error("could not load AWS credentials, no request sent: {0}")]
    NoCredentials(String),
    #[error("throttled by Secrets Manager")]
    Throttled,
    #[error("request timed out")]
    Timeout,
    #[error("could not reach Secrets Manager: {0}")]
    Network(String),
    #[error("KMS could not decrypt the secret (check kms:Decrypt on its key)")]
    Decryption,
    #[error("secret has no AWSCURRENT version")]
    NoCurrentVersion,
    #[error("secret version has no value")]
    EmptyValue,
    /// Secrets Manager answered with a server error (HTTP 5xx) after the SDK's own retries, whatever its
    /// code: the service, not the request, is failing.
    #[error("Secrets Manager failed with HTTP {status} ({code})")]
    Unavailable { status: u16, code: String },
    #[error("{code}: {message}")]
    Service { code: String, message: String },
    #[error("dev secrets file: {0}")]
    DevFile(String),
}

impl FetchError {
    /// Transient errors are retried with backoff; the others wait for the next interval, since retrying a
    /// denied or missing secret every second only burns API calls ([`crate::schedule`] decides).
    /// Refused credentials count as transient: the usual cause is a credential refresh in progress; so do
    /// credentials that cannot be loaded: the endpoint that serves them comes back on its own.
    pub fn is_transient(&self) -> bool {
        self.is_regional() || matches!(self, FetchError::NoCredentials(_) | FetchError::InvalidCredentials { .. })
    }

    /// Whether the failure says the Region's Secrets Manager is failing or overloaded — a server error,
    /// throttling that outlasted the SDK's retries, a connection that failed or timed out — so that the
    /// same call in another Region may well succeed. Credentials that cannot be loaded or are refused are
    /// transient but not regional: the same credentials fail in every Region. A denial, a missing secret or
    /// a key KMS will not use is an answer, not a failure: it is never regional.
    pub fn is_regional(&self) -> bool {
        matches!(
            self,
            FetchError::Throttled | FetchError::Timeout | FetchError::Network(_) | FetchError::Unavailable { .. }
        )
    }
}

/// The configured source.
pub enum Source {
    Aws(AwsSource),
    Dev(DevSource),
}

impl Source {
    /// Which versions carry the labels, in the secret's own Region or (`replica`) its replica's.
    pub async fn describe(&self, spec: &SecretSpec, replica: Option<&Replica>) -> Result<Labels, FetchError> {
        match self {
            Source::Aws(s) => s.describe(&spec.secret_id, replica).await,
            Source::Dev(s) => s.describe(spec),
        }
    }

    pub async fn get_version(
        &self,
        spec: &SecretSpec,
        replica: Option<&Replica>,
        version_id: &str,
    ) -> Result<Fetched, FetchError> {
        match self {
            Source::Aws(s) => s.get_version(&spec.secret_id, replica, version_id).await,
            Source::Dev(s) => s.get_version(spec, version_id),
        }
    }

    pub async fn get_current(&self, spec: &SecretSpec, replica: Option<&Replica>) -> Result<Fetched, FetchError> {
        match self {
            Source::Aws(s) => s.get_current(&spec.secret_id, replica).await,
            Source::Dev(s) => s.get_current(spec),
        }
    }

    /// The Region `spec` itself (not its replica) is read in; `None` for a dev file.
    pub fn region_of<'a>(&'a self, spec: &'a SecretSpec) -> Option<&'a str> {
        match self {
            Source::Aws(s) => Some(s.region_of(&spec.secret_id)),
            Source::Dev(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &[&str])]) -> Option<Labels> {
        let map: HashMap<String, Vec<String>> =
            pairs.iter().map(|(id, st)| (id.to_string(), st.iter().map(|s| s.to_string()).collect())).collect();
        Labels::from_stages(map.iter())
    }

    #[test]
    fn current_and_no_rotation() {
        let l = labels(&[("v1", &["AWSPREVIOUS"]), ("v2", &["AWSCURRENT"])]).unwrap();
        assert_eq!(l, Labels { current: "v2".into(), pending: None });
    }

    #[test]
    fn pending_on_another_version_means_rotation_under_way() {
        let l = labels(&[("v2", &["AWSCURRENT"]), ("v3", &["AWSPENDING"])]).unwrap();
        assert_eq!(l.pending.as_deref(), Some("v3"));
    }

    #[test]
    fn pending_beside_current_is_a_finished_rotation() {
        // AWS may leave AWSPENDING on the new AWSCURRENT version; moto always does.
        let l = labels(&[("v2", &["AWSPREVIOUS"]), ("v3", &["AWSCURRENT", "AWSPENDING"])]).unwrap();
        assert_eq!(l, Labels { current: "v3".into(), pending: None });
    }

    #[test]
    fn no_current_version_is_none() {
        assert_eq!(labels(&[("v1", &["AWSPENDING"])]), None);
        assert_eq!(labels(&[]), None);
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        assert!(FetchError::Timeout.is_transient());
        assert!(FetchError::Throttled.is_transient());
        assert!(FetchError::Network("x".into()).is_transient());
        assert!(FetchError::NoCredentials("x".into()).is_transient());
        assert!(!FetchError::NotFound.is_transient());
        assert!(!FetchError::AccessDenied { operation: Operation::GetSecretValue }.is_transient());
        assert!(FetchError::InvalidCredentials { code: "ExpiredTokenException".into() }.is_transient());
        assert!(FetchError::Unavailable { status: 503, code: "ServiceUnavailable".into() }.is_transient());
        assert!(!FetchError::Service { code: "InvalidRequestException".into(), message: "m".into() }.is_transient());
    }

    /// Only a failing Region is worth asking another: credentials fail everywhere alike, and an answer
    /// (denied, missing, KMS) must not be hidden by a replica.
    #[test]
    fn regional_failures_are_the_service_failing_not_the_request_or_the_credentials() {
        for regional in [
            FetchError::Timeout,
            FetchError::Throttled,
            FetchError::Network("connection refused".into()),
            FetchError::Unavailable { status: 500, code: "InternalServiceError".into() },
        ] {
            assert!(regional.is_regional() && regional.is_transient(), "{regional:?}");
        }
        for not in [
            FetchError::NotFound,
            FetchError::AccessDenied { operation: Operation::GetSecretValue },
            FetchError::Decryption,
            FetchError::NoCredentials("endpoint down".into()),
            FetchError::InvalidCredentials { code: "ExpiredTokenException".into() },
            FetchError::Service { code: "InvalidRequestException".into(), message: "m".into() },
            FetchError::EmptyValue,
        ] {
            assert!(!not.is_regional(), "{not:?}");
        }
    }
}
