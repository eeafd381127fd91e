//! An HTTP client for each thread that runs its own runtime.
//!
//! A pooled connection is served by a task on the runtime that opened it. When a call made on
//! one thread's runtime reuses a connection another thread's runtime opened, every chunk of the
//! reply crosses threads: the connection's task reads it, then wakes the caller on the other
//! thread (a futex wake and a context switch, hundreds of times a reply). `orchestrator serve`
//! runs one single-threaded runtime per core, so there each thread gets a client, and so a pool,
//! of its own. On a work-stealing runtime (the Lambda functions) tasks move between threads
//! anyway, and the one shared client is used as before.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;

use tokio::runtime::{Handle, RuntimeFlavor};

/// How a client is built, for each thread that needs one.
pub(crate) type Build = Box<dyn Fn() -> reqwest::Result<reqwest::Client> + Send + Sync>;

/// The client of the thread that built it, and a way to build one for any other thread.
pub(crate) struct Clients {
    id: u64,
    home: reqwest::Client,
    home_thread: ThreadId,
    build: Build,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's clients, by the `Clients` they belong to.
    static LOCAL: RefCell<Vec<(u64, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

impl Clients {
    /// Builds the first client now, so a setting that cannot work fails at start.
    pub(crate) fn new(build: Build) -> reqwest::Result<Self> {
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            home: build()?,
            home_thread: std::thread::current().id(),
            build,
        })
    }

    /// The client for a call made from here.
    pub(crate) fn get(&self) -> reqwest::Client {
        let single_threaded =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !single_threaded || std::thread::current().id() == self.home_thread {
            return self.home.clone();
        }
        LOCAL.with_borrow_mut(|local| {
            if let Some((_, client)) = local.iter().find(|(id, _)| *id == self.id) {
                return client.clone();
            }
            // It built once already with these settings; should it fail now, share the first.
            let client = (self.build)().unwrap_or_else(|_| self.home.clone());
            local.push((self.id, client.clone()));
            client
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn counting() -> (Clients, Arc<AtomicUsize>) {
        let built = Arc::new(AtomicUsize::new(0));
        let count = built.clone();
        let clients = Clients::new(Box::new(move || {
            count.fetch_add(1, Ordering::Relaxed);
            reqwest::Client::builder().build()
        }))
        .unwrap();
        (clients, built)
    }

    fn on_own_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let _entered = rt.enter();
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn each_single_threaded_runtime_gets_one_client_of_its_own() {
        // GIVEN clients built on this thread
        let (clients, built) = counting();
        // WHEN another thread with its own runtime asks twice, and a third once
        on_own_runtime(|| {
            clients.get();
            clients.get();
        });
        on_own_runtime(|| clients.get());
        // THEN each of those threads built one client, once
        assert_eq!(built.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_work_stealing_runtime_and_the_building_thread_share_the_first_client() {
        // GIVEN clients built on this thread
        let (clients, built) = counting();
        // WHEN this thread asks, and a thread of a multi-thread runtime asks
        clients.get();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let shared = Arc::new(clients);
        let on_worker = shared.clone();
        rt.block_on(async move { tokio::spawn(async move { on_worker.get() }).await })
            .unwrap();
        // THEN no other client was built
        assert_eq!(built.load(Ordering::Relaxed), 1);
    }
}
