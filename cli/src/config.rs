//! Configuration from the environment, read once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

#[derive(Debug, Clone)]
pub struct Config {
    /// The model provider, its model, timeouts, retries and prompts folder.
    pub llm: orchestrator_llm::LlmConfig,
    /// Where the SQLite database lives (`--db` overrides).
    pub db: Option<PathBuf>,
    /// Which store keeps runs (`--store` overrides).
    pub store: StoreKind,
    /// The DynamoDB table and client settings, used when the store is DynamoDB.
    pub dynamodb: orchestrator_store::DynamoDbConfig,
    pub serve: ServeConfig,
    /// How long a run's lease lasts unrenewed (ORCHESTRATOR_LEASE_SECONDS).
    pub lease_ttl: Duration,
    /// This process's name in run leases (ORCHESTRATOR_OWNER); else host:pid:random.
    pub owner: Option<String>,
    /// The cap on runs in progress in the store (ORCHESTRATOR_MAX_RUNS_IN_PROGRESS).
    pub max_runs_in_progress: Option<usize>,
    /// Whether model calls are recorded, and their redaction (ORCHESTRATOR_RECORD,
    /// ORCHESTRATOR_REDACT_FILE); their retention is ORCHESTRATOR_CALLS_TTL_DAYS (in `dynamodb`).
    pub record: orchestrator_recording::RecordConfig,
    /// How long streamed text may wait before it is written to the run's log and its
    /// watchers (ORCHESTRATOR_DELTA_FLUSH_MS; default: the runner's).
    pub delta_flush_ms: u64,
}

/// The range `ORCHESTRATOR_DELTA_FLUSH_MS` accepts.
const DELTA_FLUSH_MS: std::ops::RangeInclusive<u64> = 1..=10_000;

/// ORCHESTRATOR_DELTA_FLUSH_MS, or the runner's default.
fn delta_flush_ms() -> anyhow::Result<u64> {
    let default = orchestrator_runner::RunnerConfig::default().delta_max_age_ms;
    let Some(ms) = var("ORCHESTRATOR_DELTA_FLUSH_MS") else {
        return Ok(default);
    };
    match ms.trim().parse() {
        Ok(ms) if DELTA_FLUSH_MS.contains(&ms) => Ok(ms),
        _ => bail!(
            "ORCHESTRATOR_DELTA_FLUSH_MS={ms:?} must be a whole number of milliseconds from {} to {} (unset it for {default})",
            DELTA_FLUSH_MS.start(),
            DELTA_FLUSH_MS.end(),
        ),
    }
}

/// Where runs, events and reports are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A local SQLite file.
    Sqlite,
    /// A DynamoDB table (TABLE_NAME, AWS_REGION, AWS_ENDPOINT_URL).
    Dynamodb,
}

/// What `orchestrator serve` reads.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: String,
    pub api_key: Option<String>,
    pub cors_origins: Vec<String>,
    pub ping: Duration,
    pub max_streams: usize,
    pub max_runs: usize,
    pub max_body_bytes: usize,
    /// Run starts a minute per API key (ORCHESTRATOR_MAX_STARTS_PER_MINUTE); None: no limit.
    pub max_starts_per_minute: Option<u32>,
    /// Threads that serve connections, each with its own runtime (ORCHESTRATOR_SERVE_THREADS;
    /// default: one per core).
    pub threads: usize,
}

/// The most `ORCHESTRATOR_SERVE_THREADS` may ask for.
const MAX_SERVE_THREADS: usize = 256;

/// ORCHESTRATOR_SERVE_THREADS, or one thread per core the process may use.
fn serve_threads() -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = number("ORCHESTRATOR_SERVE_THREADS", cores)?;
    if !(1..=MAX_SERVE_THREADS).contains(&threads) {
        bail!(
            "ORCHESTRATOR_SERVE_THREADS must be between 1 and {MAX_SERVE_THREADS} (unset it for one per core: {cores})"
        );
    }
    Ok(threads)
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number")),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        // MODEL_PROVIDER, MODEL_ID, OPENAI_*, MODEL_*_SECS, MODEL_MAX_RETRIES, AWS_REGION,
        // ORCHESTRATOR_OFFLINE_CHUNK_MS and ORCHESTRATOR_PROMPTS_DIR are the llm crate's.
        let llm = orchestrator_llm::LlmConfig::from_env()?;
        let store = match var("ORCHESTRATOR_STORE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("sqlite") => StoreKind::Sqlite,
            Some("dynamodb") => StoreKind::Dynamodb,
            Some(other) => bail!("ORCHESTRATOR_STORE={other:?} is unknown; use sqlite or dynamodb"),
        };
        // TABLE_NAME, AWS_REGION, AWS_ENDPOINT_URL, AWS_MAX_ATTEMPTS and
        // ORCHESTRATOR_EVENTS_TTL_DAYS are the store crate's.
        let dynamodb = orchestrator_store::DynamoDbConfig::from_env()?;
        let ping_seconds: u64 = number("ORCHESTRATOR_PING_SECONDS", 15)?;
        if ping_seconds == 0 {
            bail!("ORCHESTRATOR_PING_SECONDS must be at least 1");
        }
        let serve = ServeConfig {
            addr: var("ORCHESTRATOR_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
            api_key: var("API_KEY"),
            cors_origins: var("ORCHESTRATOR_CORS_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            ping: Duration::from_secs(ping_seconds),
            max_streams: number("ORCHESTRATOR_MAX_STREAMS", 1024)?,
            max_runs: number("ORCHESTRATOR_MAX_RUNS", 256)?,
            max_body_bytes: number("ORCHESTRATOR_MAX_BODY_BYTES", 64 * 1024)?,
            max_starts_per_minute: orchestrator_api::max_starts_per_minute_from_env()?,
            threads: serve_threads()?,
        };
        let lease_seconds: f64 = number("ORCHESTRATOR_LEASE_SECONDS", 15.0)?;
        if !(0.1..=86_400.0).contains(&lease_seconds) {
            bail!("ORCHESTRATOR_LEASE_SECONDS must be between 0.1 and 86400");
        }
        let owner = var("ORCHESTRATOR_OWNER").map(|o| o.trim().to_owned());
        if let Some(o) = &owner
            && (o.len() > 200 || o.chars().any(char::is_control))
        {
            bail!("ORCHESTRATOR_OWNER must be at most 200 characters, with no control characters");
        }
        Ok(Self {
            llm,
            lease_ttl: Duration::from_secs_f64(lease_seconds),
            owner,
            max_runs_in_progress: orchestrator_runner::max_runs_in_progress_from_env()?,
            record: orchestrator_recording::RecordConfig::from_env()?,
            delta_flush_ms: delta_flush_ms()?,
            db: var("ORCHESTRATOR_DB").map(PathBuf::from),
            store,
            dynamodb,
            serve,
        })
    }

    /// How long recorded model calls are kept (ORCHESTRATOR_CALLS_TTL_DAYS; 0: for ever).
    pub fn call_retention(&self) -> Option<Duration> {
        let days = u64::from(self.dynamodb.calls_ttl_days);
        (days > 0).then(|| Duration::from_secs(days * 86_400))
    }

    /// `--db`, else ORCHESTRATOR_DB, else the user's data directory.
    pub fn db_path(&self, flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| self.db.clone())
            .unwrap_or_else(Self::default_db_path)
    }

    /// Where runs are kept when neither `--db` nor ORCHESTRATOR_DB says.
    pub fn default_db_path() -> PathBuf {
        dirs::data_dir()
            .map(|d| d.join("orchestrator").join("orchestrator.db"))
            .unwrap_or_else(|| PathBuf::from("orchestrator.db"))
    }
}
