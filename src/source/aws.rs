//! Secrets Manager through the AWS SDK. Region, credentials and endpoint come from `aws-config`'s default
//! chains (env, ECS container credentials, web identity, IMDS; `AWS_ENDPOINT_URL_SECRETS_MANAGER`), so
//! nothing here re-implements them.
//!
//! Secrets Manager answers for a secret only in its own Region, so a secret given by ARN is read in the
//! ARN's Region, and a replica in the replica's. Each such Region gets a client of its own, made from the
//! same configuration with only the Region changed: the same credentials, timeouts and retries, and the
//! same endpoint override where one is set (one emulator serves every Region; the SigV4 scope names it).
//!
//! Every `GetSecretValue` names a `VersionId` or `VersionStage`: moto returns a stale value for a request
//! that names neither after `UpdateSecretVersionStage` (docs/secrets-manager.md, "The emulator"), and naming it
//! costs nothing on AWS.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use std::collections::BTreeMap;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Region;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::{AWSCURRENT, FetchError, Fetched, Labels, Operation};
use crate::entry::{Replica, arn_region};
use crate::secret::SecretValue;

/// A hung TCP connect must not stall a poll loop; ECS endpoints answer in milliseconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One HTTP attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole operation, SDK retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no AWS region configured: set AWS_REGION (Fargate sets it for you)")]
    NoRegion,
    #[error("no AWS credentials provider: rds-iam:// entries sign with the task role's credentials")]
    NoCredentials,
}

pub struct AwsSource {
    /// The SDK's Region: where a secret given by name is read.
    region: String,
    /// A client per Region a secret is read in: the SDK's, and each ARN's and replica's.
    clients: BTreeMap<String, Client>,
}

/// Loads the SDK configuration from the environment (credentials chain, region), with our timeouts.
pub async fn sdk_config(endpoint_url: Option<&str>) -> Result<aws_config::SdkConfig, SetupError> {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(SetupError::NoRegion);
    }
    Ok(sdk)
}

impl AwsSource {
    /// The SDK's Region's client, and one for each of `regions` (an ARN's, a replica's) that is another.
    /// `None` without a Region ([`sdk_config`] refuses that).
    pub fn from_sdk<'a>(sdk: &aws_config::SdkConfig, regions: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let region = sdk.region()?.to_string();
        let mut clients: BTreeMap<String, Client> = regions
            .into_iter()
            .filter(|r| *r != region)
            .map(|r| {
                let conf = aws_sdk_secretsmanager::config::Builder::from(sdk).region(Region::new(r.to_owned())).build();
                (r.to_owned(), Client::from_conf(conf))
            })
            .collect();
        clients.insert(region.clone(), Client::new(sdk));
        Some(AwsSource { region, clients })
    }

    /// Wraps ready clients, one per Region, the first the SDK's: `aws-smithy-mocks`'s, in tests.
    #[cfg(test)]
    pub fn from_clients(clients: impl IntoIterator<Item = (&'static str, Client)>) -> Self {
        let clients: Vec<_> = clients.into_iter().map(|(r, c)| (r.to_owned(), c)).collect();
        AwsSource { region: clients[0].0.clone(), clients: clients.into_iter().collect() }
    }

    /// One client, for tests that need no other Region.
    #[cfg(test)]
    pub fn from_client(client: Client) -> Self {
        Self::from_clients([("us-east-1", client)])
    }

    /// The Region `secret_id` is read in: the ARN's for an ARN, else the SDK's.
    pub fn region_of<'a>(&'a self, secret_id: &'a str) -> &'a str {
        arn_region(secret_id).unwrap_or(&self.region)
    }

    /// The client and the id to ask, for the secret `secret_id` or its `replica`.
    fn target<'a>(&'a self, secret_id: &'a str, replica: Option<&'a Replica>) -> (&'a Client, &'a str) {
        let (region, id) = match replica {
            None => (self.region_of(secret_id), secret_id),
            Some(r) => (r.region.as_str(), r.secret_id.as_str()),
        };
        // `run` makes a client for every Region a configured secret is read in, before any check.
        (self.clients.get(region).expect("a client for every Region a secret is read in"), id)
    }

    pub async fn describe(&self, secret_id: &str, replica: Option<&Replica>) -> Result<Labels, FetchError> {
        let (client, secret_id) = self.target(secret_id, replica);
        let out = client
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| classify(Operation::DescribeSecret, e))?;
        let versions = out.version_ids_to_stages.unwrap_or_default();
        Labels::from_stages(versions.iter()).ok_or(FetchError::NoCurrentVersion)
    }

    pub async fn get_version(
        &self,
        secret_id: &str,
        replica: Option<&Replica>,
        version_id: &str,
    ) -> Result<Fetched, FetchError> {
        let (client, secret_id) = self.target(secret_id, replica);
        let req = client.get_secret_value().secret_id(secret_id).version_id(version_id);
        to_fetched(req.send().await.map_err(|e| classify(Operation::GetSecretValue, e))?)
    }

    pub async fn get_current(&self, secret_id: &str, replica: Option<&Replica>) -> Result<Fetched, FetchError> {
        let (client, secret_id) = self.target(secret_id, replica);
        let req = client.get_secret_value().secret_id(secret_id).version_stage(AWSCURRENT);
        to_fetched(req.send().await.map_err(|e| classify(Operation::GetSecretValue, e))?)
    }
}

fn to_fetched(
    out: aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput,
) -> Result<Fetched, FetchError> {
    let version_id = out.version_id.ok_or(FetchError::NoCurrentVersion)?;
    let (value, binary) = match (out.secret_string, out.secret_binary) {
        (Some(s), _) => (SecretValue::from(s), false),
        (None, Some(b)) => (SecretValue::new(b.into_inner()), true),
        (None, None) => return Err(FetchError::EmptyValue),
    };
    if value.is_empty() {
        // Publishing an empty file would take the app down harder than a stale one (consul-template PR #2167).
        return Err(FetchError::EmptyValue);
    }
    Ok(Fetched { version_id, value, binary })
}

/// Maps an SDK failure to what the poller needs to decide: retry soon, or wait; ask another Region or not;
/// and what to report.
fn classify<E>(operation: Operation, err: SdkError<E, HttpResponse>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => return FetchError::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => return FetchError::Timeout,
        // The SDK loads credentials inside the request's dispatch, so a credentials failure arrives as a
        // dispatch failure too; told apart, because nothing was sent and the fix is somewhere else.
        SdkError::DispatchFailure(_) if let Some(cause) = credentials_error(&err) => {
            return FetchError::NoCredentials(messages(cause));
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            return FetchError::Network(DisplayErrorContext(&err).to_string());
        }
        _ => {}
    }
    let code = err.code().unwrap_or("Unknown").to_owned();
    // A server error is the service failing whatever its code says (`InternalServiceError`, or a front
    // door's 503 the model does not know): retried soon, and a reason to ask a replica. Throttling is
    // told apart by its code, as AWS sends it with a 400.
    if let Some(status) = err.raw_response().map(|r| r.status()).filter(|s| s.is_server_error()) {
        return FetchError::Unavailable { status: status.as_u16(), code };
    }
    match code.as_str() {
        "ResourceNotFoundException" => FetchError::NotFound,
        "AccessDeniedException" | "AccessDenied" => FetchError::AccessDenied { operation },
        // The key, not the policy: an unknown or expired key says nothing about what the role may do.
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "ExpiredToken"
        | "ExpiredTokenException" => FetchError::InvalidCredentials { code },
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => FetchError::Throttled,
        "DecryptionFailure" => FetchError::Decryption,
        _ => FetchError::Service { message: err.message().unwrap_or("no message").to_owned(), code },
    }
}

/// The credentials provider's error somewhere in `err`'s sources.
fn credentials_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a CredentialsError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The messages of `err` and its sources, joined with ": ", like anyhow's `{:#}` (no `Debug` dump).
fn messages(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    /// An error as Secrets Manager sends it on the wire (awsJson1.1), so the SDK's own parsing is tested too.
    fn aws_error(code: &'static str) -> impl Fn() -> HttpResponse + Send + Sync + 'static {
        aws_error_status(400, code)
    }

    fn aws_error_status(status: u16, code: &'static str) -> impl Fn() -> HttpResponse + Send + Sync + 'static {
        move || {
            HttpResponse::new(
                StatusCode::try_from(status).unwrap(),
                SdkBody::from(format!(r#"{{"__type":"{code}","message":"from the service"}}"#)),
            )
        }
    }

    /// A client that makes one attempt per call: the SDK's retries of 5xx and throttling answers are its
    /// own business, and would only make these tests wait.
    fn one_attempt(c: aws_sdk_secretsmanager::config::Builder) -> aws_sdk_secretsmanager::config::Builder {
        c.retry_config(aws_sdk_secretsmanager::config::retry::RetryConfig::disabled())
    }

    /// `InternalServiceError` was the one server error taken as transient: a 503 with a code the model does
    /// not know (a front door's) waited the whole interval, and a Region failing that way would never have
    /// been a reason to ask its replica.
    #[tokio::test]
    async fn every_server_error_is_the_service_failing_whatever_its_code() {
        let rules = [
            mock!(Client::get_secret_value).then_http_response(aws_error_status(500, "InternalServiceError")),
            mock!(Client::get_secret_value).then_http_response(aws_error_status(503, "ServiceUnavailable")),
            mock!(Client::get_secret_value).then_http_response(aws_error_status(502, "Unknown")),
            mock!(Client::get_secret_value).then_http_response(aws_error("ThrottlingException")),
            mock!(Client::get_secret_value).then_http_response(aws_error("InvalidRequestException")),
        ];
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &rules, one_attempt);
        let source = AwsSource::from_client(client);
        let mut got = Vec::new();
        for _ in &rules {
            let e = source.get_current("db", None).await.unwrap_err();
            got.push((e.is_regional(), e.to_string()));
        }
        assert_eq!(
            got,
            [
                (true, "Secrets Manager failed with HTTP 500 (InternalServiceError)".to_owned()),
                (true, "Secrets Manager failed with HTTP 503 (ServiceUnavailable)".to_owned()),
                (true, "Secrets Manager failed with HTTP 502 (Unknown)".to_owned()),
                (true, "throttled by Secrets Manager".to_owned()),
                (false, "InvalidRequestException: from the service".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn access_denied_on_describe_is_reported_as_such() {
        // moto allows everything, so a denied DescribeSecret (which switches a secret to get-only) exists only here.
        let rule = mock!(Client::describe_secret).then_http_response(aws_error("AccessDeniedException"));
        let source = AwsSource::from_client(mock_client!(aws_sdk_secretsmanager, [&rule]));
        assert_eq!(
            source.describe("db", None).await.unwrap_err(),
            FetchError::AccessDenied { operation: Operation::DescribeSecret }
        );
    }

    /// An invalid or expired key is not AccessDenied: a denied DescribeSecret turns rotation awareness off,
    /// so refused credentials must be their own kind.
    #[tokio::test]
    async fn refused_credentials_are_not_access_denied() {
        for code in ["UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException"] {
            let rule = mock!(Client::describe_secret).then_http_response(aws_error(code));
            let source = AwsSource::from_client(mock_client!(aws_sdk_secretsmanager, [&rule]));
            let err = source.describe("db", None).await.unwrap_err();
            assert_eq!(err, FetchError::InvalidCredentials { code: code.into() });
            assert!(err.is_transient(), "{code}");
        }
    }

    /// Without credentials (the task role's endpoint down) nothing reaches Secrets Manager: reported as
    /// such, in plain words, not as an unreachable Secrets Manager with a `Debug` dump of the SDK's error.
    #[test]
    fn credentials_that_cannot_be_loaded_are_not_a_network_error() {
        use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err: SdkError<DescribeSecretError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(CredentialsError::provider_error(cause).into(), None));
        let got = classify(Operation::DescribeSecret, err);
        assert_eq!(
            got,
            FetchError::NoCredentials("an error occurred while loading credentials: connection refused".into())
        );
        assert_eq!(
            got.to_string(),
            "could not load AWS credentials, no request sent: an error occurred while loading credentials: connection refused"
        );

        let io = ConnectorError::io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into());
        let err: SdkError<DescribeSecretError, HttpResponse> = SdkError::dispatch_failure(io);
        assert!(matches!(classify(Operation::DescribeSecret, err), FetchError::Network(_)));
    }

    #[tokio::test]
    async fn modeled_errors_map_to_their_kinds() {
        let nf = mock!(Client::get_secret_value).then_http_response(aws_error("ResourceNotFoundException"));
        let kms = mock!(Client::get_secret_value).then_http_response(aws_error("DecryptionFailure"));
        let other = mock!(Client::get_secret_value).then_http_response(aws_error("InvalidRequestException"));
        let source =
            AwsSource::from_client(mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, [&nf, &kms, &other]));
        assert_eq!(source.get_current("db", None).await.unwrap_err(), FetchError::NotFound);
        assert_eq!(source.get_current("db", None).await.unwrap_err(), FetchError::Decryption);
        assert_eq!(
            source.get_current("db", None).await.unwrap_err(),
            FetchError::Service { code: "InvalidRequestException".into(), message: "from the service".into() }
        );
    }

    #[tokio::test]
    async fn describe_without_current_version_is_an_error_not_a_panic() {
        let rule = mock!(Client::describe_secret).then_output(|| DescribeSecretOutput::builder().build());
        let source = AwsSource::from_client(mock_client!(aws_sdk_secretsmanager, [&rule]));
        assert_eq!(source.describe("db", None).await.unwrap_err(), FetchError::NoCurrentVersion);
    }

    #[tokio::test]
    async fn get_current_names_the_stage_and_empty_values_are_refused() {
        let named = mock!(Client::get_secret_value)
            .match_requests(|r| r.version_stage() == Some(AWSCURRENT) && r.version_id().is_none())
            .then_output(|| GetSecretValueOutput::builder().version_id("v1").secret_string(r#"{"a":1}"#).build());
        let empty = mock!(Client::get_secret_value)
            .then_output(|| GetSecretValueOutput::builder().version_id("v2").secret_string("").build());
        let source =
            AwsSource::from_client(mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, [&named, &empty]));
        let got = source.get_current("db", None).await.unwrap();
        assert_eq!((got.version_id.as_str(), got.value.expose()), ("v1", &br#"{"a":1}"#[..]));
        assert_eq!(source.get_current("db", None).await.unwrap_err(), FetchError::EmptyValue);
    }
}
