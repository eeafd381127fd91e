//! The path users take, measured from outside: a real `orchestrator serve` process, the
//! reference run posted to `POST /api/v1/agent/run.stream` over loopback HTTP and its SSE stream
//! read to `complete` by a lean client, the server's CPU and peak RSS read from /proc. Beside
//! it, the floor: a bare client making the run's seven model calls itself, at the same
//! concurrency, with nothing around them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start {bin}: {error}")]
    Spawn { bin: String, error: String },
    #[error("orchestrator serve did not say where it listens: {0}")]
    NoAddress(String),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("a run's stream ended without `complete` ({0} bytes read)")]
    Incomplete(usize),
    #[error("cannot read /proc/{0}/stat")]
    Proc(u32),
}

/// A running `orchestrator serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `bin serve` on a free port, with the OpenAI-compatible model at `model_url` (or the
    /// offline model when none) and its own database in `dir`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        model_url: Option<&str>,
        record: bool,
    ) -> Result<Self, ServeError> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--db"])
            .arg(dir.join("serve.db"))
            .env("ORCHESTRATOR_RECORD", if record { "on" } else { "off" })
            .env("ORCHESTRATOR_MAX_RUNS", "1024")
            .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0")
            .env_remove("API_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match model_url {
            Some(url) => cmd
                .env("MODEL_PROVIDER", "openai")
                .env("MODEL_ID", "mock")
                .env("OPENAI_BASE_URL", url),
            None => cmd.env_remove("MODEL_PROVIDER"),
        };
        let mut child = cmd.spawn().map_err(|e| ServeError::Spawn {
            bin: bin.display().to_string(),
            error: e.to_string(),
        })?;
        let stderr = child.stderr.take();
        let mut server = Server {
            child,
            base: String::new(),
        };
        let mut line = String::new();
        if let Some(stderr) = stderr {
            let mut reader = BufReader::new(stderr);
            let _ = reader.read_line(&mut line);
            // Keep draining it so the server never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        }
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| ServeError::NoAddress(line.clone()))?;
        server.base = addr.trim_end_matches('/').to_owned();
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// User + system CPU of a process, all its threads (exited ones included), from /proc.
pub fn proc_cpu(pid: u32) -> Result<Duration, ServeError> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| ServeError::Proc(pid))?;
    // The fields after the command name, which may hold spaces, closed by the last ')'.
    let rest = stat.rsplit_once(')').ok_or(ServeError::Proc(pid))?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the state field.
    let (utime, stime) = ticks(11).zip(ticks(12)).ok_or(ServeError::Proc(pid))?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks(),
    ))
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Posts the reference run to `serve` and reads its stream to the `complete` frame: the
/// wall time of the run as its client sees it.
pub async fn one_run(
    http: &reqwest::Client,
    base: &str,
    objective: &str,
) -> Result<Duration, ServeError> {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/api/v1/agent/run.stream"))
        .json(&serde_json::json!({ "objective": objective }))
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut tail: Vec<u8> = Vec::new();
    let mut read = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        read += chunk.len();
        // Only the last bytes matter: `complete` is the last frame.
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
        if contains(&tail, b"event: complete\n") {
            return Ok(started.elapsed());
        }
    }
    Err(ServeError::Incomplete(read))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `runs` runs, `concurrency` at a time (each task runs its share back to back): their walls.
pub async fn drive_runs(
    http: &reqwest::Client,
    base: &str,
    objective: &str,
    runs: usize,
    concurrency: usize,
) -> Result<Vec<Duration>, ServeError> {
    let per_task = runs.div_ceil(concurrency.max(1));
    let tasks = (0..concurrency.max(1)).map(|t| async move {
        let mine = per_task.min(runs.saturating_sub(t * per_task));
        let mut walls = Vec::with_capacity(mine);
        for _ in 0..mine {
            walls.push(one_run(http, base, objective).await?);
        }
        Ok::<_, ServeError>(walls)
    });
    let mut all = Vec::with_capacity(runs);
    for walls in futures::future::join_all(tasks).await {
        all.extend(walls?);
    }
    Ok(all)
}

/// The floor: the reference run's calls (`bodies`) made back to back per run by a bare client,
/// `concurrency` runs at a time: each run's wall.
pub async fn bare_runs(
    http: &reqwest::Client,
    base_url: &str,
    bodies: &[Value],
    runs: usize,
    concurrency: usize,
) -> Result<Vec<Duration>, ServeError> {
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let per_task = runs.div_ceil(concurrency.max(1));
    let url = &url;
    let tasks = (0..concurrency.max(1)).map(|t| async move {
        let mine = per_task.min(runs.saturating_sub(t * per_task));
        let mut walls = Vec::with_capacity(mine);
        for _ in 0..mine {
            let started = Instant::now();
            for body in bodies {
                let response = http.post(url).json(body).send().await?.error_for_status()?;
                let mut bytes = response.bytes_stream();
                while let Some(chunk) = bytes.next().await {
                    chunk?;
                }
            }
            walls.push(started.elapsed());
        }
        Ok::<_, ServeError>(walls)
    });
    let mut all = Vec::with_capacity(runs);
    for walls in futures::future::join_all(tasks).await {
        all.extend(walls?);
    }
    Ok(all)
}

/// One measurement of the serve path, or of its floor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathResult {
    pub runs: usize,
    pub concurrency: usize,
    /// CPU per run of the process that does the work: the server's (read from /proc), or the
    /// bare client's own.
    pub cpu_ms_per_run: f64,
    /// The client's CPU per run (the lean SSE reader; 0 for the floor, whose client is the
    /// measured process).
    pub client_cpu_ms_per_run: f64,
    pub runs_per_s: f64,
    pub wall_ms_median: f64,
    pub wall_ms_p95: f64,
    /// Scheduled model time per run (the mock's counters), and the wall over it.
    pub scheduled_ms: f64,
    pub overhead_ms_median: f64,
    pub overhead_ms_p95: f64,
    /// Peak RSS of the measured process, MiB.
    pub peak_rss_mb: f64,
}
