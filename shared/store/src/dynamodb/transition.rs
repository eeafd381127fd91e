//! [`RunStore::commit_transition`] on DynamoDB: the composed default, but with the handoffs of
//! the attempts a transition opens written in the commit's own transaction, after its events.
//! The default appends each handoff on its own: a transaction per opening, each reading and
//! rewriting the meta item and putting an event item of one small event.

use orchestrator_core::event::Event;
use orchestrator_core::ports::{Committed, OpenedStep, RunStore, StoreError, TransitionWrite};

use super::DynamoDbStore;

impl DynamoDbStore {
    pub(super) async fn transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        let run_id = w.state.run_id.as_str();
        if let Some(result) = w.result {
            let stored = self.put_step_result(run_id, result).await?;
            if stored != *result {
                return Ok(Committed::ResultTaken(stored));
            }
        }
        if w.state.status.is_terminal() {
            // As the default: the report goes first (a final transition opens nothing).
            let frames = self.commit_finished(w.state, w.events, w.now_ms).await?;
            let mut opened = Vec::with_capacity(w.opens.len());
            for o in w.opens {
                let fence = w.state.lease_token;
                let step = self.open_step(run_id, &o.step_id, o.attempt, &o.handoff, fence);
                opened.push(step.await?);
            }
            return Ok(Committed::Written { frames, opened });
        }
        // An attempt that already has a result (a retried dispatch) gets no handoff.
        let mut stored = Vec::with_capacity(w.opens.len());
        let mut events: Vec<Event> = w.events.to_vec();
        for o in w.opens {
            let result = self.step_item(run_id, &o.step_id, o.attempt).await?;
            if result.is_none() {
                events.extend(o.handoff.iter().cloned());
            }
            stored.push(result);
        }
        // The commit is fenced by the state's lease token, as each opening would have been.
        let mut frames = self.commit(w.state, &events).await?;
        frames.truncate(w.events.len());
        let results = if stored.iter().any(Option::is_none) {
            self.step_results(run_id).await?
        } else {
            Vec::new()
        };
        let opened = stored
            .into_iter()
            .map(|result| match result {
                Some(result) => OpenedStep::Stored(result),
                None => OpenedStep::Open {
                    results: results.clone(),
                },
            })
            .collect();
        Ok(Committed::Written { frames, opened })
    }
}
