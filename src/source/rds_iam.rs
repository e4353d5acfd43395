//! RDS IAM database authentication tokens, minted locally.
//!
//! A token is a SigV4-presigned `GET https://HOST:PORT/?Action=connect&DBUser=USER` for the service
//! `rds-db`, with the `https://` cut off: the database checks the signature against the IAM policy of
//! whoever signed it (`rds-db:connect` on `dbuser:<DbiResourceId>/<user>`). Signing is local — no API
//! call — with the task's credentials, and the result is the same as botocore's
//! `generate_db_auth_token` and the AWS SDK's `AuthTokenGenerator` for the same credentials and instant
//! (`tests/it/iam_token.rs` compares it with botocore).
//!
//! A token is valid for [`TOKEN_LIFETIME`] (15 minutes, the longest RDS accepts) **and** no longer than
//! the session credentials that signed it: [`Token::expires_at`] is the earlier of the two.
//!
//! Why `aws-sigv4` directly rather than `aws-sdk-rds`'s `AuthTokenGenerator` (which wraps the same
//! presigner): linking the generator adds next to nothing to the binary, but compiling `aws-sdk-rds` — the
//! whole RDS client, hundreds of operations — more than doubles every release build, for sixty lines.
//!
//! The host is the name the client dials: a cluster, instance, custom or RDS Proxy endpoint each sign
//! differently, because the database checks the `Host` the token names.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{self, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::utf8_percent_encode;

use crate::percent::UNRESERVED;
use crate::secret::SecretString;

/// How long RDS accepts a token after it was signed (`X-Amz-Expires=900`).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
const SERVICE: &str = "rds-db";
const ACTION: &str = "connect";

/// The database login a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The hostname the client connects to, as it dials it.
    pub host: String,
    pub port: u16,
    /// The database user (`DBUser`).
    pub user: String,
    /// The region of the database (which may differ from the SDK's).
    pub region: String,
}

/// A signed token. Holds a credential, so `Debug` shows only when it expires.
pub struct Token {
    value: SecretString,
    expires_at: SystemTime,
}

impl Token {
    /// The token, to be sent as the password.
    pub fn value(&self) -> &SecretString {
        &self.value
    }

    /// The earlier of the signing time + [`TOKEN_LIFETIME`] and the signing credentials' expiry.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[REDACTED]")
            .field("expires_at", &humantime::format_rfc3339_seconds(self.expires_at))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign an RDS IAM token for {host}:{port}: {reason}")]
    Sign { host: String, port: u16, reason: String },
    #[error("the AWS credentials expired at {} before the token could be signed", humantime::format_rfc3339_seconds(*.0))]
    CredentialsExpired(SystemTime),
}

/// Signs a token for `target` with `credentials` at `now`. Pure: the same inputs give the same token.
pub fn presign(target: &Target, credentials: &Credentials, now: SystemTime) -> Result<Token, SignError> {
    let sign_error = |reason: String| SignError::Sign { host: target.host.clone(), port: target.port, reason };
    if let Some(expiry) = credentials.expiry()
        && expiry <= now
    {
        return Err(SignError::CredentialsExpired(expiry));
    }
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&target.region)
        .name(SERVICE)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| sign_error(e.to_string()))?;

    // The query is encoded the way botocore encodes it, and the same string is what gets signed.
    let mut query = format!("Action={ACTION}&DBUser={}", utf8_percent_encode(&target.user, UNRESERVED));
    let url = format!("https://{}:{}/?{query}", target.host, target.port);
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::empty())
        .map_err(|e| sign_error(e.to_string()))?;
    let (instructions, _signature) =
        http_request::sign(request, &params.into()).map_err(|e| sign_error(e.to_string()))?.into_parts();
    let (_headers, signed_params) = instructions.into_parts();

    for (name, value) in &signed_params {
        query.push_str(&format!("&{name}={}", utf8_percent_encode(value, UNRESERVED)));
    }
    let token = format!("{}:{}/?{query}", target.host, target.port);

    let lifetime_end = now + TOKEN_LIFETIME;
    let expires_at = credentials.expiry().map_or(lifetime_end, |e| e.min(lifetime_end));
    Ok(Token { value: SecretString::from(token), expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn target(host: &str, port: u16, user: &str, region: &str) -> Target {
        Target { host: host.into(), port, user: user.into(), region: region.into() }
    }

    /// The AWS SDK for Rust's own test vector for `aws_sdk_rds::auth_token::AuthTokenGenerator`.
    #[test]
    fn token_matches_the_aws_sdk_test_vector() {
        let creds = Credentials::new("akid", "secret", None, None, "test");
        let t = target("prod-instance.us-east-1.rds.amazonaws.com", 3306, "peccy", "us-east-1");
        let token = presign(&t, &creds, UNIX_EPOCH + Duration::from_secs(1_724_709_600)).unwrap();
        assert_eq!(
            token.value().expose(),
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
        assert_eq!(token.expires_at(), UNIX_EPOCH + Duration::from_secs(1_724_709_600 + 900));
    }

    #[test]
    fn a_token_expires_with_the_session_credentials_that_signed_it() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = target("db.example.internal", 5432, "app", "eu-west-1");
        let short = Credentials::new("AKID", "SECRET", Some("TOKEN".into()), Some(now + Duration::from_secs(300)), "t");
        assert_eq!(presign(&t, &short, now).unwrap().expires_at(), now + Duration::from_secs(300));
        let long = Credentials::new("AKID", "SECRET", Some("TOKEN".into()), Some(now + Duration::from_secs(3600)), "t");
        assert_eq!(presign(&t, &long, now).unwrap().expires_at(), now + TOKEN_LIFETIME);
        let expired = Credentials::new("AKID", "SECRET", Some("TOKEN".into()), Some(now), "t");
        assert!(matches!(presign(&t, &expired, now), Err(SignError::CredentialsExpired(e)) if e == now));
    }

    #[test]
    fn the_session_token_is_signed_into_the_query() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = target("db.example.internal", 5432, "app", "eu-west-1");
        let creds = Credentials::new("AKID", "SECRET", Some("SESSION/TOKEN+=".into()), None, "t");
        let token = presign(&t, &creds, now).unwrap();
        let params: Vec<&str> = token.value().expose().split_once("/?").unwrap().1.split('&').collect();
        assert!(params.contains(&"X-Amz-Security-Token=SESSION%2FTOKEN%2B%3D"), "{params:?}");
        assert!(token.value().expose().starts_with("db.example.internal:5432/?Action=connect&DBUser=app&"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let creds = Credentials::new("akid", "secret", None, None, "test");
        let token = presign(&target("h", 1, "u", "us-east-1"), &creds, UNIX_EPOCH).unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains("X-Amz-Signature"), "{shown}");
        assert!(shown.contains("[REDACTED]"));
    }
}
