//! [`RunStore`] for SQLite: each call is one statement or one write transaction, composed of
//! the parts in the sibling modules.

use async_trait::async_trait;
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, Frame};
use orchestrator_core::ports::{
    ActiveRun, Claim, Committed, Created, Lease, OpenedStep, RunCursor, RunStore, StoreError,
    TransitionWrite,
};
use orchestrator_core::types::{RunReport, RunSummary, StepResult};

use super::events::{append_events, check_events};
use super::results::{
    open_steps, read_report, read_step_result, read_step_results, taken_by, upsert_report,
    write_report,
};
use super::runs::{StateRow, insert_run, load_state, run_exists, save_transition};
use super::{SqliteStore, lease, listing, saturating_i64};
use crate::codec::encode;

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError> {
        check_events(&state.run_id, events)?;
        let row = StateRow::new(state, self.clock.now_ms())?;
        let events = events.to_vec();
        self.write(
            &state.run_id,
            move |tx| insert_run(tx, row, events),
            |created| matches!(created, Created::New { frames } if !frames.is_empty()),
        )
        .await
    }

    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError> {
        check_events(&state.run_id, events)?;
        let row = StateRow::new(state, self.clock.now_ms())?;
        let events = events.to_vec();
        self.write(
            &state.run_id,
            move |tx| save_transition(tx, row, events),
            |frames| !frames.is_empty(),
        )
        .await
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| load_state(conn, &run_id)).await
    }

    async fn list_runs(
        &self,
        limit: usize,
        before: Option<&RunCursor>,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let before = before.map(|c| (saturating_i64(c.created_at_ms), c.run_id.clone()));
        self.call(move |conn| listing::list_runs(conn, limit, before))
            .await
    }

    async fn list_active(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map(|c| (saturating_i64(c.created_at_ms), c.run_id.clone()));
        self.call(move |conn| lease::list_active(conn, limit, after))
            .await
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        let replacing = replacing.map(str::to_owned);
        let now = self.clock.now_ms();
        self.write(
            "",
            move |tx| lease::acquire(tx, &run_id, &owner, now, ttl_ms, replacing.as_deref()),
            |_| false,
        )
        .await
    }

    async fn renew_lease(&self, held: &Lease, ttl_ms: u64) -> Result<Lease, StoreError> {
        let held = held.clone();
        let now = self.clock.now_ms();
        self.write("", move |tx| lease::renew(tx, held, now, ttl_ms), |_| false)
            .await
    }

    async fn release_lease(&self, held: &Lease) -> Result<(), StoreError> {
        let held = held.clone();
        self.write("", move |tx| lease::release(tx, &held), |_| false)
            .await
    }

    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError> {
        let run_id = run_id.to_owned();
        let json = encode(result, "step result")?;
        let ours = result.clone();
        self.write(
            "",
            move |tx| {
                if !run_exists(tx, &run_id)? {
                    return Err(StoreError::NotFound(run_id));
                }
                Ok(taken_by(tx, &run_id, &ours, &json)?.unwrap_or(ours))
            },
            |_| false,
        )
        .await
    }

    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError> {
        let run_id = run_id.to_owned();
        let step_id = step_id.to_owned();
        self.call(move |conn| read_step_result(conn, &run_id, &step_id, attempt))
            .await
    }

    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| read_step_results(conn, &run_id))
            .await
    }

    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError> {
        let run_id = report.run_id.clone();
        let json = encode(report, "report")?;
        self.write(
            "",
            move |tx| {
                if !run_exists(tx, &run_id)? {
                    return Err(StoreError::NotFound(run_id));
                }
                upsert_report(tx, &run_id, &json)
            },
            |_| false,
        )
        .await
    }

    /// One transaction: the stored result, or the handoff appended and the results read.
    async fn open_step(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
        handoff: &[Event],
        fence: Option<u64>,
    ) -> Result<OpenedStep, StoreError> {
        check_events(run_id, handoff)?;
        let key = run_id;
        let run_id = run_id.to_owned();
        let step_id = step_id.to_owned();
        let handoff = handoff.to_vec();
        self.write(
            key,
            move |tx| {
                if let Some(stored) = read_step_result(tx, &run_id, &step_id, attempt)? {
                    return Ok(OpenedStep::Stored(stored));
                }
                lease::check_writer(tx, &run_id, fence)?;
                append_events(tx, &run_id, handoff)?;
                let results = read_step_results(tx, &run_id)?;
                Ok(OpenedStep::Open { results })
            },
            |opened| matches!(opened, OpenedStep::Open { .. }),
        )
        .await
    }

    /// One transaction: the report built from the results, the state and the events.
    async fn commit_finished(
        &self,
        state: &RunState,
        events: &[Event],
        now_ms: u64,
    ) -> Result<Vec<Frame>, StoreError> {
        check_events(&state.run_id, events)?;
        let row = StateRow::new(state, self.clock.now_ms())?;
        let events = events.to_vec();
        let key = state.run_id.as_str();
        let state = state.clone();
        self.write(
            key,
            move |tx| {
                if !run_exists(tx, &state.run_id)? {
                    return Err(StoreError::NotFound(state.run_id));
                }
                write_report(tx, &state, now_ms)?;
                save_transition(tx, row, events)
            },
            |frames| !frames.is_empty(),
        )
        .await
    }

    /// One transaction: the result, the state and events (with the report when the run ends)
    /// and the openings. A result that finds its attempt taken rolls nothing forward.
    async fn commit_transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        let run_id = w.state.run_id.clone();
        check_events(&run_id, w.events)?;
        for o in w.opens {
            check_events(&run_id, &o.handoff)?;
        }
        let row = StateRow::new(w.state, self.clock.now_ms())?;
        let events = w.events.to_vec();
        let result = w
            .result
            .map(|r| Ok::<_, StoreError>((r.clone(), encode(r, "step result")?)))
            .transpose()?;
        let opens = w.opens.to_vec();
        // The report is built inside the transaction, from the results it can see.
        let finished = w
            .state
            .status
            .is_terminal()
            .then(|| (w.state.clone(), w.now_ms));
        self.write(
            &w.state.run_id,
            move |tx| {
                if !run_exists(tx, &run_id)? {
                    return Err(StoreError::NotFound(run_id));
                }
                if let Some((ours, json)) = result
                    && let Some(stored) = taken_by(tx, &run_id, &ours, &json)?
                {
                    return Ok(Committed::ResultTaken(stored));
                }
                if let Some((state, now_ms)) = &finished {
                    write_report(tx, state, *now_ms)?;
                }
                let frames = save_transition(tx, row, events)?;
                // The fence was checked with the state above, in this transaction.
                let opened = open_steps(tx, &run_id, opens)?;
                Ok(Committed::Written { frames, opened })
            },
            |committed| matches!(committed, Committed::Written { .. }),
        )
        .await
    }

    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| read_report(conn, &run_id)).await
    }
}
