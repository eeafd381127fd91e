//! Recording and replay of model calls. The drivers number each call within its run's unit
//! ([`within`]); a [`Recorder`] stores every call (redacted by a [`Redact`]) with the run; a
//! [`Tape`] answers a replay or a fork from that record; [`compare`] puts a replay's event log
//! and a changed request beside the original's.

pub mod compare;
pub mod recorder;
pub mod redact;
pub mod scope;
pub mod tape;

pub use compare::{LogMatch, compare_logs, request_lines, side_by_side};
pub use recorder::Recorder;
pub use redact::{Nothing, PatternError, Patterns, Redact};
pub use scope::{CallKey, next_call, within};
pub use tape::{Divergence, Tape};

use std::path::PathBuf;
use std::sync::Arc;

use orchestrator_core::ports::{CallLog, Model, SystemClock};

/// Whether runs record their model calls, and how the records are redacted; read once from
/// `ORCHESTRATOR_RECORD` (on, the default, or off) and `ORCHESTRATOR_REDACT_FILE`.
#[derive(Clone)]
pub struct RecordConfig {
    pub enabled: bool,
    pub redact: Arc<dyn Redact>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordConfigError {
    #[error("ORCHESTRATOR_RECORD={0:?} must be on or off")]
    Switch(String),
    #[error("ORCHESTRATOR_REDACT_FILE: {0}")]
    Patterns(#[from] PatternError),
}

impl RecordConfig {
    pub fn from_env() -> Result<Self, RecordConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, RecordConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let enabled = match var("ORCHESTRATOR_RECORD").map(|v| v.trim().to_ascii_lowercase()) {
            None => true,
            Some(v) if matches!(v.as_str(), "on" | "true" | "1") => true,
            Some(v) if matches!(v.as_str(), "off" | "false" | "0") => false,
            Some(v) => return Err(RecordConfigError::Switch(v)),
        };
        let redact: Arc<dyn Redact> = match var("ORCHESTRATOR_REDACT_FILE") {
            Some(path) => Arc::new(Patterns::with_file(&PathBuf::from(path))?),
            None => Arc::new(Patterns::builtin()),
        };
        Ok(Self { enabled, redact })
    }

    /// `model`, recording its calls into `log` when recording is on.
    pub fn wrap(&self, model: Arc<dyn Model>, log: Arc<dyn CallLog>) -> Arc<dyn Model> {
        if !self.enabled {
            return model;
        }
        Arc::new(Recorder::new(
            model,
            log,
            self.redact.clone(),
            Arc::new(SystemClock),
        ))
    }
}

impl std::fmt::Debug for RecordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordConfig")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            redact: Arc::new(Patterns::builtin()),
        }
    }
}
