//! Who this process is when it drives runs, and how long its leases last.

use std::time::Duration;

/// The lease time when none is configured: long enough to ride out a slow store write, short
/// enough that a dead process's runs are picked up soon.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Names this process in leases (and in the error a second driver gets).
    pub owner: String,
    /// A lease not renewed for this long lapses; another process may then take the run.
    pub ttl: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            owner: process_owner(),
            ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl LeaseConfig {
    pub fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renewals come three times per lease time, so one late or lost renewal is survived.
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(10))
    }
}

/// `host:pid:random`, unique per process even when pids are reused across restarts.
pub fn process_owner() -> String {
    let host = hostname().unwrap_or_else(|| "localhost".to_owned());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &nonce[..8])
}

/// The hostname, as [`process_owner`] writes it.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
}

/// An owner of [`process_owner`]'s form, on this machine, whose process is gone. Only a
/// certainty counts: another machine's owner, or a system without `/proc`, is never "dead"
/// here (its lease lapses instead). A wrong "dead" cannot cause harm beyond a takeover: the
/// fencing token stops the old owner's writes.
pub fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(_nonce), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let proc_fs = std::path::Path::new("/proc/self").exists();
    proc_fs
        && pid != std::process::id()
        && hostname().as_deref() == Some(host)
        && !std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// Renews a lease on its own task, so a driver busy with a slow store write never lets it
/// lapse; says when another owner has taken it.
pub(crate) struct Keeper {
    task: tokio::task::JoinHandle<()>,
    lease: std::sync::Arc<std::sync::Mutex<Option<orchestrator_core::ports::Lease>>>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl Keeper {
    pub(crate) fn start(
        store: std::sync::Arc<dyn crate::Store>,
        lease: orchestrator_core::ports::Lease,
        config: &LeaseConfig,
    ) -> Self {
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(lease)));
        let held = shared.clone();
        let (every, ttl_ms) = (config.renew_every(), config.ttl_ms());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(current) = held.lock().ok().and_then(|l| l.clone()) else {
                    return;
                };
                match store.renew_lease(&current, ttl_ms).await {
                    Ok(renewed) => {
                        if let Ok(mut slot) = held.lock() {
                            *slot = Some(renewed);
                        }
                    }
                    Err(orchestrator_core::ports::StoreError::LeaseLost(_)) => {
                        if let Ok(mut slot) = held.lock() {
                            *slot = None;
                        }
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // A store hiccup: the next tick tries again, well before the lease lapses.
                    Err(e) => {
                        tracing::warn!(run_id = %current.run_id, error = %e, "could not renew the lease")
                    }
                }
            }
        });
        Self {
            task,
            lease: shared,
            lost,
        }
    }

    /// Resolves once another owner has taken the lease (never, while it is ours).
    pub(crate) async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops renewing; the lease as last renewed, unless another owner has it.
    pub(crate) fn stop(self) -> Option<orchestrator_core::ports::Lease> {
        self.task.abort();
        self.lease.lock().ok().and_then(|mut l| l.take())
    }
}
