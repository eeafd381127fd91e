//! Which run and unit (plan version, step attempt) a model call belongs to. The drivers set it
//! around the planner call and each step; the recorder and the tape read it. A task-local
//! rather than a parameter: the agents call the Model port and need not know about records.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use orchestrator_core::ports::CallUnit;

tokio::task_local! {
    static SCOPE: Arc<CallScope>;
}

struct CallScope {
    run_id: String,
    unit: CallUnit,
    next: AtomicU32,
}

/// The place of one model call in its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallKey {
    pub run_id: String,
    pub unit: CallUnit,
    pub index: u32,
}

/// Runs `fut` with its model calls numbered from 0 under (`run_id`, `unit`).
pub async fn within<F: Future>(run_id: &str, unit: CallUnit, fut: F) -> F::Output {
    let scope = Arc::new(CallScope {
        run_id: run_id.to_owned(),
        unit,
        next: AtomicU32::new(0),
    });
    SCOPE.scope(scope, fut).await
}

/// The key of the call about to be made, taking its number; none outside [`within`].
pub fn next_call() -> Option<CallKey> {
    SCOPE
        .try_with(|scope| CallKey {
            run_id: scope.run_id.clone(),
            unit: scope.unit.clone(),
            index: scope.next.fetch_add(1, Ordering::Relaxed),
        })
        .ok()
}

/// The key the next call will get, without taking it (a wrapper that hands the call on to a
/// model that numbers it itself).
pub fn peek_call() -> Option<CallKey> {
    SCOPE
        .try_with(|scope| CallKey {
            run_id: scope.run_id.clone(),
            unit: scope.unit.clone(),
            index: scope.next.load(Ordering::Relaxed),
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_numbered_per_unit_and_unknown_outside_a_scope() {
        // GIVEN two units running at once
        let plan = within("r1", CallUnit::Plan { version: 1 }, async {
            tokio::task::yield_now().await;
            (next_call(), next_call())
        });
        let step = CallUnit::Step {
            step_id: "s1".into(),
            attempt: 2,
        };
        let step_calls = within("r1", step.clone(), async { next_call() });

        // WHEN both run
        let ((first, second), only) = futures::join!(plan, step_calls);

        // THEN each numbers its own calls from 0
        assert_eq!(first.map(|k| k.index), Some(0));
        assert_eq!(
            second.map(|k| (k.unit, k.index)),
            Some((CallUnit::Plan { version: 1 }, 1))
        );
        assert_eq!(only.map(|k| (k.unit, k.index)), Some((step, 0)));
        // AND a call outside any unit has no key
        assert_eq!(next_call(), None);
    }
}
