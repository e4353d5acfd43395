//! Prometheus metrics, served at `GET /metrics` without a token like `/healthz`: they hold secret names,
//! counts and times, never a value or a version's content.
//!
//! What a platform team alerts on: `secrets_sidecar_last_success_timestamp_seconds` far in the past (a task
//! cut off from Secrets Manager, which `/healthz` deliberately does not turn red for), a rising
//! `secrets_sidecar_checks_total{result="error"}`, and the API calls a fleet makes
//! (`secrets_sidecar_api_calls_total`, the number that turns into the bill).

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CheckResult {
    unchanged,
    changed,
    error,
}

/// What a render of a `--template` did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RenderResult {
    /// Rendered and written.
    ok,
    /// Rendered to the bytes the file already held: left alone.
    unchanged,
    /// The render or the write failed; the last good file stays.
    failed,
}

use crate::source::Operation;

impl EncodeLabelValue for Operation {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub secret: String,
    pub result: CheckResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub secret: String,
    pub operation: Operation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForcedLabels {
    pub secret: String,
    /// "true" when the forced refresh asked the source, "false" inside --min-refresh-gap.
    pub fetched: String,
}

/// How an on-change action's firing ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ActionOutcome {
    ok,
    failed,
    timeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action's index among the `--on-change` entries, from 0.
    pub action: String,
    pub outcome: ActionOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenderLabels {
    pub template: String,
    pub result: RenderResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabel {
    pub secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub secret: String,
    pub region: String,
}

pub struct Metrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    api_calls: Family<CallLabels, Counter>,
    forced: Family<ForcedLabels, Counter>,
    last_success: Family<SecretLabel, Gauge>,
    rotation: Family<SecretLabel, Gauge>,
    token_expiry: Family<SecretLabel, Gauge>,
    renders: Family<RenderLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    action_last_ok: Family<ActionLabel, Gauge>,
    failovers: Family<SecretLabel, Counter>,
    failover_returns: Family<SecretLabel, Counter>,
    serving_region: Family<RegionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("secrets_sidecar");
        let m = Metrics {
            checks: Family::default(),
            api_calls: Family::default(),
            forced: Family::default(),
            last_success: Family::default(),
            rotation: Family::default(),
            token_expiry: Family::default(),
            renders: Family::default(),
            actions: Family::default(),
            action_last_ok: Family::default(),
            failovers: Family::default(),
            failover_returns: Family::default(),
            serving_region: Family::default(),
            registry: Registry::default(),
        };
        registry.register("checks", "Checks of a secret, by result", m.checks.clone());
        registry.register("api_calls", "Secrets Manager calls made, by operation", m.api_calls.clone());
        registry.register("forced_refreshes", "POST /v1/secrets/NAME/refresh calls", m.forced.clone());
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful check",
            m.last_success.clone(),
        );
        registry.register("rotation_in_progress", "1 while AWSPENDING is on another version", m.rotation.clone());
        registry.register(
            "rds_iam_token_expiry_timestamp_seconds",
            "Unix time the published RDS IAM token of an rds-iam:// entry expires (alert when it nears time())",
            m.token_expiry.clone(),
        );
        registry.register("template_renders", "Renders of a --template, by result", m.renders.clone());
        registry.register(
            "actions",
            "Firings of an --on-change action (retries included), by outcome",
            m.actions.clone(),
        );
        registry.register(
            "action_last_success_timestamp_seconds",
            "Unix time an --on-change action last succeeded",
            m.action_last_ok.clone(),
        );
        registry.register(
            "failovers",
            "Switches of a secret from its own Region, failing, to its replica's (--failover-region)",
            m.failovers.clone(),
        );
        registry.register(
            "failover_returns",
            "Switches of a secret from its replica back to its own Region",
            m.failover_returns.clone(),
        );
        registry.register(
            "serving_region",
            "1 for the Region a secret is read from, 0 for its replica's Region while it is not",
            m.serving_region.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn label(secret: &str) -> SecretLabel {
    SecretLabel { secret: secret.to_owned() }
}

impl Metrics {
    pub fn check(&self, secret: &str, result: CheckResult) {
        self.checks.get_or_create(&CheckLabels { secret: secret.to_owned(), result }).inc();
    }

    pub fn api_call(&self, secret: &str, operation: Operation) {
        self.api_calls.get_or_create(&CallLabels { secret: secret.to_owned(), operation }).inc();
    }

    pub fn forced(&self, secret: &str, fetched: bool) {
        self.forced.get_or_create(&ForcedLabels { secret: secret.to_owned(), fetched: fetched.to_string() }).inc();
    }

    pub fn success(&self, secret: &str, at: SystemTime, rotation_in_progress: bool) {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.last_success.get_or_create(&label(secret)).set(i64::try_from(secs).unwrap_or(i64::MAX));
        self.rotation.get_or_create(&label(secret)).set(i64::from(rotation_in_progress));
    }

    pub fn token_expiry(&self, secret: &str, at: SystemTime) {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.token_expiry.get_or_create(&label(secret)).set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    pub fn failover(&self, secret: &str) {
        self.failovers.get_or_create(&label(secret)).inc();
    }

    pub fn failover_return(&self, secret: &str) {
        self.failover_returns.get_or_create(&label(secret)).inc();
    }

    /// `secret` is read from `region`; `other` is the Region it is not read from, if it has one.
    pub fn serving_region(&self, secret: &str, region: &str, other: Option<&str>) {
        let labels = |region: &str| RegionLabels { secret: secret.to_owned(), region: region.to_owned() };
        self.serving_region.get_or_create(&labels(region)).set(1);
        if let Some(other) = other {
            self.serving_region.get_or_create(&labels(other)).set(0);
        }
    }

    pub fn render(&self, template: &str, result: RenderResult) {
        self.renders.get_or_create(&RenderLabels { template: template.to_owned(), result }).inc();
    }

    pub fn action(&self, action: usize, outcome: ActionOutcome, at: SystemTime) {
        let action = action.to_string();
        if outcome == ActionOutcome::ok {
            let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let gauge = self.action_last_ok.get_or_create(&ActionLabel { action: action.clone() });
            gauge.set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
        self.actions.get_or_create(&ActionLabels { action, outcome }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_was_recorded() {
        let m = Metrics::default();
        m.check("db", CheckResult::changed);
        m.check("db", CheckResult::unchanged);
        m.check("db", CheckResult::unchanged);
        m.api_call("db", Operation::DescribeSecret);
        m.forced("db", false);
        m.success("db", UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000), true);
        m.render("db_url", RenderResult::ok);
        m.render("db_url", RenderResult::failed);
        m.action(0, ActionOutcome::timeout, SystemTime::now());
        m.action(0, ActionOutcome::ok, UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_001));
        m.serving_region("db", "us-east-1", Some("us-west-2"));
        m.failover("db");
        m.serving_region("db", "us-west-2", Some("us-east-1"));
        let text = m.encode();
        for line in [
            r#"secrets_sidecar_checks_total{secret="db",result="unchanged"} 2"#,
            r#"secrets_sidecar_checks_total{secret="db",result="changed"} 1"#,
            r#"secrets_sidecar_api_calls_total{secret="db",operation="DescribeSecret"} 1"#,
            r#"secrets_sidecar_forced_refreshes_total{secret="db",fetched="false"} 1"#,
            r#"secrets_sidecar_last_success_timestamp_seconds{secret="db"} 1700000000"#,
            r#"secrets_sidecar_rotation_in_progress{secret="db"} 1"#,
            r#"secrets_sidecar_template_renders_total{template="db_url",result="ok"} 1"#,
            r#"secrets_sidecar_template_renders_total{template="db_url",result="failed"} 1"#,
            r#"secrets_sidecar_actions_total{action="0",outcome="timeout"} 1"#,
            r#"secrets_sidecar_actions_total{action="0",outcome="ok"} 1"#,
            r#"secrets_sidecar_action_last_success_timestamp_seconds{action="0"} 1700000001"#,
            r#"secrets_sidecar_failovers_total{secret="db"} 1"#,
            r#"secrets_sidecar_serving_region{secret="db",region="us-west-2"} 1"#,
            r#"secrets_sidecar_serving_region{secret="db",region="us-east-1"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
