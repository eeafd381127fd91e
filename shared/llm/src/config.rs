//! Which model to use and how to reach it: read once from the environment, typed, in one place.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The OpenAI API; any OpenAI-compatible server (vLLM, Ollama, LM Studio) is given by
/// `OPENAI_BASE_URL` instead.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Offline,
    OpenAi,
    Bedrock,
}

impl Provider {
    /// The name users type in MODEL_PROVIDER.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Offline => "offline",
            Provider::OpenAi => "openai",
            Provider::Bedrock => "bedrock",
        }
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Timeouts and retries, the same for every provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resilience {
    /// Time to connect (TCP + TLS).
    pub connect_timeout: Duration,
    /// A whole non-streamed call; for a stream, the wait for its headers and the longest
    /// silence between two of its chunks.
    pub request_timeout: Duration,
    /// Retries after the first attempt, on throttling and 5xx only.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it (with jitter), up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl Resilience {
    /// Exponential backoff with jitter before retry number `retry` (0-based): a random delay
    /// between half and all of `base * 2^retry`, so clients throttled together do not come back
    /// together. A server's `Retry-After` wins when it asks for longer (within `max_delay`).
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = half.mul_f64(fastrand::f64());
        let delay = half + jitter;
        match retry_after {
            Some(asked) if asked > delay => asked.min(self.max_delay),
            _ => delay,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmConfig {
    pub provider: Provider,
    /// MODEL_ID: the OpenAI model name or the Bedrock model id (or inference profile).
    pub model: String,
    pub openai_base_url: String,
    /// Optional: local servers usually need none.
    pub openai_api_key: Option<ApiKey>,
    /// AWS_REGION; unset, the AWS SDK's own chain (profile, IMDS) decides.
    pub aws_region: Option<String>,
    pub resilience: Resilience,
    /// Pause between chunks the offline model streams.
    pub offline_chunk_delay: Duration,
    /// ORCHESTRATOR_PROMPTS_DIR: a folder whose planner.md, strategy.md, writer.md, qa.md and
    /// chat.md replace the built-in prompts.
    pub prompts_dir: Option<PathBuf>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            provider: Provider::Offline,
            model: "offline-deterministic-v1".into(),
            openai_base_url: DEFAULT_OPENAI_BASE_URL.into(),
            openai_api_key: None,
            aws_region: None,
            resilience: Resilience::default(),
            offline_chunk_delay: Duration::from_millis(3),
            prompts_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{var} is not set: {why}")]
    Missing {
        var: &'static str,
        why: &'static str,
    },
}

impl LlmConfig {
    /// Reads the process environment (once, at start-up).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`, so tests need not touch the process environment.
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let var: Var<'_> = &var;
        let defaults = Self::default();
        // Read in this order, so the first wrong variable is the one reported.
        let provider = provider_of(var)?;
        let model = model_of(var, provider, &defaults.model)?;
        let openai_base_url = base_url_of(var, &defaults.openai_base_url)?;
        let max_retries = max_retries_of(var, defaults.resilience.max_retries)?;
        let offline_chunk_delay = chunk_delay_of(var, defaults.offline_chunk_delay)?;
        Ok(Self {
            provider,
            model,
            openai_base_url,
            openai_api_key: var("OPENAI_API_KEY").map(|k| ApiKey::new(k.trim())),
            aws_region: var("AWS_REGION").map(|r| r.trim().to_owned()),
            resilience: Resilience {
                connect_timeout: secs(
                    var,
                    "MODEL_CONNECT_TIMEOUT_SECS",
                    defaults.resilience.connect_timeout,
                )?,
                request_timeout: secs(
                    var,
                    "MODEL_TIMEOUT_SECS",
                    defaults.resilience.request_timeout,
                )?,
                max_retries,
                ..defaults.resilience
            },
            offline_chunk_delay,
            prompts_dir: var("ORCHESTRATOR_PROMPTS_DIR").map(PathBuf::from),
        })
    }

    /// "provider/model", for the run's output.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.provider.as_str(), self.model)
    }
}

/// A variable's value, `None` when it is unset or empty.
type Var<'a> = &'a dyn Fn(&str) -> Option<String>;

fn provider_of(var: Var<'_>) -> Result<Provider, ConfigError> {
    let Some(p) = var("MODEL_PROVIDER").map(|p| p.trim().to_ascii_lowercase()) else {
        return Ok(Provider::Offline);
    };
    match p.as_str() {
        "offline" => Ok(Provider::Offline),
        "openai" => Ok(Provider::OpenAi),
        "bedrock" => Ok(Provider::Bedrock),
        _ => Err(ConfigError::Invalid {
            var: "MODEL_PROVIDER",
            value: p,
            expected: "use offline, openai or bedrock",
        }),
    }
}

/// MODEL_ID, which every provider but the offline one needs.
fn model_of(var: Var<'_>, provider: Provider, offline: &str) -> Result<String, ConfigError> {
    match (provider, var("MODEL_ID")) {
        (Provider::Offline, _) => Ok(offline.to_owned()),
        (_, Some(m)) => Ok(m.trim().to_owned()),
        (Provider::OpenAi, None) => Err(ConfigError::Missing {
            var: "MODEL_ID",
            why: "MODEL_PROVIDER=openai needs the model name, e.g. MODEL_ID=gpt-4o-mini (or llama3.1 on Ollama)",
        }),
        (Provider::Bedrock, None) => Err(ConfigError::Missing {
            var: "MODEL_ID",
            why: "MODEL_PROVIDER=bedrock needs a model id, e.g. MODEL_ID=anthropic.claude-3-5-haiku-20241022-v1:0",
        }),
    }
}

fn base_url_of(var: Var<'_>, default: &str) -> Result<String, ConfigError> {
    let Some(url) = var("OPENAI_BASE_URL") else {
        return Ok(default.to_owned());
    };
    let url = url.trim().trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        // The value is not echoed: a mistyped variable might hold a secret.
        return Err(ConfigError::Invalid {
            var: "OPENAI_BASE_URL",
            value: "<hidden>".into(),
            expected: "an http:// or https:// URL, e.g. http://localhost:11434/v1",
        });
    }
    Ok(url)
}

fn secs(var: Var<'_>, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => Err(ConfigError::Invalid {
                var: name,
                value: v,
                expected: "a whole number of seconds, at least 1",
            }),
        },
    }
}

fn max_retries_of(var: Var<'_>, default: u32) -> Result<u32, ConfigError> {
    match var("MODEL_MAX_RETRIES") {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n <= 10 => Ok(n),
            _ => Err(ConfigError::Invalid {
                var: "MODEL_MAX_RETRIES",
                value: v,
                expected: "a number of retries from 0 to 10",
            }),
        },
    }
}

fn chunk_delay_of(var: Var<'_>, default: Duration) -> Result<Duration, ConfigError> {
    match var("ORCHESTRATOR_OFFLINE_CHUNK_MS") {
        None => Ok(default),
        Some(v) => match v.trim().parse() {
            Ok(ms) => Ok(Duration::from_millis(ms)),
            Err(_) => Err(ConfigError::Invalid {
                var: "ORCHESTRATOR_OFFLINE_CHUNK_MS",
                value: v,
                expected: "a number of milliseconds",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_provider_means_offline() {
        // GIVEN an empty environment WHEN it is read THEN the offline model is chosen
        let c = LlmConfig::from_lookup(env(&[])).unwrap();
        assert_eq!(c.provider, Provider::Offline);
    }

    #[test]
    fn openai_reads_every_variable() {
        // GIVEN an OpenAI-compatible local server
        let c = LlmConfig::from_lookup(env(&[
            ("MODEL_PROVIDER", "OpenAI"),
            ("MODEL_ID", "llama3.1"),
            ("OPENAI_BASE_URL", "http://localhost:11434/v1/"),
            ("MODEL_TIMEOUT_SECS", "30"),
            ("MODEL_CONNECT_TIMEOUT_SECS", "2"),
            ("MODEL_MAX_RETRIES", "0"),
        ]))
        .unwrap();
        // THEN everything is typed, the key optional, the trailing slash gone
        assert_eq!(c.provider, Provider::OpenAi);
        assert_eq!(c.model, "llama3.1");
        assert_eq!(c.openai_base_url, "http://localhost:11434/v1");
        assert_eq!(c.openai_api_key, None);
        assert_eq!(c.resilience.request_timeout, Duration::from_secs(30));
        assert_eq!(c.resilience.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.resilience.max_retries, 0);
        assert_eq!(c.describe(), "openai/llama3.1");
    }

    #[test]
    fn errors_name_the_variable() {
        // GIVEN bad values WHEN read THEN the error names the variable to fix
        let e = LlmConfig::from_lookup(env(&[("MODEL_PROVIDER", "gpt")])).unwrap_err();
        assert!(e.to_string().contains("MODEL_PROVIDER"));
        let e = LlmConfig::from_lookup(env(&[("MODEL_PROVIDER", "bedrock")])).unwrap_err();
        assert!(e.to_string().contains("MODEL_ID"));
        let e = LlmConfig::from_lookup(env(&[
            ("MODEL_PROVIDER", "openai"),
            ("MODEL_ID", "m"),
            ("MODEL_TIMEOUT_SECS", "soon"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("MODEL_TIMEOUT_SECS"));
    }

    #[test]
    fn the_key_never_prints() {
        // GIVEN a key WHEN the config is debug-printed THEN the key is not in it
        let c = LlmConfig::from_lookup(env(&[
            ("MODEL_PROVIDER", "openai"),
            ("MODEL_ID", "m"),
            ("OPENAI_API_KEY", "sk-very-secret"),
        ]))
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
        assert_eq!(c.openai_api_key.unwrap().expose(), "sk-very-secret");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        // GIVEN the default policy WHEN retries pile up THEN each delay lies in [d/2, d], capped
        let r = Resilience::default();
        for retry in 0..8 {
            let d = r.backoff(retry, None);
            let full = (r.base_delay * 2u32.pow(retry)).min(r.max_delay);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        assert_eq!(
            r.backoff(0, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }
}
