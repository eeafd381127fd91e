//! Where the table is and how the SDK client behaves, read once from the environment.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::config::retry::RetryConfig;

/// The table name when `TABLE_NAME` is unset.
pub const DEFAULT_TABLE: &str = "orchestrator";
/// SDK attempts per request (the first try included) when `AWS_MAX_ATTEMPTS` is unset.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Events expire this many days after they were written, by default.
pub const DEFAULT_EVENTS_TTL_DAYS: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?} is not valid: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: &'static str,
    },
}

/// How to reach the table. Build it with [`DynamoDbConfig::from_env`] or by hand (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbConfig {
    pub table_name: String,
    /// `AWS_REGION`; unset means the SDK's usual chain (profile, instance metadata), or
    /// `us-east-1` when an emulator endpoint is set.
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL`: an emulator (moto, DynamoDB Local) instead of AWS.
    pub endpoint_url: Option<String>,
    /// `AWS_MAX_ATTEMPTS`: the SDK retries throttling and transient errors up to this many
    /// attempts in all (standard retry mode).
    pub max_attempts: u32,
    /// The first retry waits up to this long (then exponential backoff with jitter).
    /// DynamoDB recovers from throttling in milliseconds, so this is far below the SDK's
    /// general default of one second.
    pub initial_backoff: Duration,
    /// `ORCHESTRATOR_EVENTS_TTL_DAYS`: events get a `ttl` this many days ahead (0 = never).
    pub events_ttl_days: u32,
    /// `ORCHESTRATOR_CALLS_TTL_DAYS`: recorded model calls are kept this many days (0 = forever).
    pub calls_ttl_days: u32,
    /// Use placeholder credentials: set when an emulator endpoint is configured and no
    /// `AWS_ACCESS_KEY_ID` is, since emulators accept any and the SDK's credential chain would
    /// otherwise wait on instance metadata that is not there.
    pub placeholder_credentials: bool,
}

impl DynamoDbConfig {
    /// A configuration for `table_name` with the defaults, no region and no endpoint.
    pub fn new(table_name: impl Into<String>) -> Self {
        Self {
            table_name: table_name.into(),
            region: None,
            endpoint_url: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(50),
            events_ttl_days: DEFAULT_EVENTS_TTL_DAYS,
            calls_ttl_days: DEFAULT_EVENTS_TTL_DAYS,
            placeholder_credentials: false,
        }
    }

    /// Reads `TABLE_NAME`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_MAX_ATTEMPTS`,
    /// `ORCHESTRATOR_EVENTS_TTL_DAYS` and `ORCHESTRATOR_CALLS_TTL_DAYS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Self::from_env`], with the variables from `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = Self::new(var("TABLE_NAME").unwrap_or_else(|| DEFAULT_TABLE.to_owned()));
        config.region = var("AWS_REGION");
        config.endpoint_url = var("AWS_ENDPOINT_URL");
        if let Some(v) = var("AWS_MAX_ATTEMPTS") {
            config.max_attempts = match v.trim().parse() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "AWS_MAX_ATTEMPTS",
                        value: v,
                        why: "expected a whole number of at least 1",
                    });
                }
            };
        }
        if let Some(v) = var("ORCHESTRATOR_EVENTS_TTL_DAYS") {
            config.events_ttl_days = v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "ORCHESTRATOR_EVENTS_TTL_DAYS",
                value: v.clone(),
                why: "expected a whole number of days (0 keeps events forever)",
            })?;
        }
        if let Some(v) = var("ORCHESTRATOR_CALLS_TTL_DAYS") {
            config.calls_ttl_days = v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "ORCHESTRATOR_CALLS_TTL_DAYS",
                value: v.clone(),
                why: "expected a whole number of days (0 keeps recorded model calls forever)",
            })?;
        }
        config.placeholder_credentials =
            config.endpoint_url.is_some() && var("AWS_ACCESS_KEY_ID").is_none();
        Ok(config)
    }

    /// Where requests go, for messages: the endpoint, else the region.
    pub fn location(&self) -> String {
        match (&self.endpoint_url, &self.region) {
            (Some(url), _) => url.clone(),
            (None, Some(region)) => format!("region {region}"),
            (None, None) => "the default region".to_owned(),
        }
    }

    /// Builds the SDK client (once per process; clients are cheap to clone).
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    /// The SDK configuration the client is built from: region, endpoint, retries. A Lambda
    /// builds its other clients (Step Functions, Secrets Manager) from the same one.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let retry = RetryConfig::standard()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff);
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry);
        let region = self
            .region
            .clone()
            .or_else(|| self.endpoint_url.as_ref().map(|_| "us-east-1".to_owned()));
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if self.placeholder_credentials {
            loader = loader.credentials_provider(Credentials::new(
                "emulator",
                "emulator",
                None,
                None,
                "orchestrator-emulator",
            ));
        }
        loader.load().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn defaults_and_overrides() {
        // GIVEN no variables THEN the defaults apply
        let c = DynamoDbConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c.table_name, DEFAULT_TABLE);
        assert_eq!(c.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(!c.placeholder_credentials);

        // GIVEN an emulator endpoint without credentials
        let c = DynamoDbConfig::from_lookup(lookup(&[
            ("TABLE_NAME", "runs"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_MAX_ATTEMPTS", "3"),
            ("ORCHESTRATOR_EVENTS_TTL_DAYS", "0"),
        ]))
        .unwrap();
        // THEN they are read, and placeholder credentials are used
        assert_eq!(c.table_name, "runs");
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.events_ttl_days, 0);
        assert!(c.placeholder_credentials);
        assert_eq!(c.location(), "http://127.0.0.1:5000");
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        // GIVEN a max attempts of zero WHEN read THEN the error names it
        let err = DynamoDbConfig::from_lookup(lookup(&[("AWS_MAX_ATTEMPTS", "0")])).unwrap_err();
        assert!(err.to_string().contains("AWS_MAX_ATTEMPTS"), "{err}");
        let err = DynamoDbConfig::from_lookup(lookup(&[("ORCHESTRATOR_EVENTS_TTL_DAYS", "x")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("ORCHESTRATOR_EVENTS_TTL_DAYS"),
            "{err}"
        );
    }
}
