//! Express segments. On an Express state machine a run is a chain of executions, each one
//! numbered segment: segment 0 is started with the run, the next one by an answered approval
//! (the segment before ended at the checkpoint) or by a segment near Express's five-minute
//! limit. Each segment's first state claims its number for its execution with a conditional
//! write, and every move checks that no later segment exists: a duplicated start, or a segment
//! a later one superseded, ends without doing anything. On Standard none of this applies (the
//! functions get no segment number).

use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::ports::StoreError;
use orchestrator_store::{DynamoDbStore, SegmentClaim, SegmentRecord};

use crate::contract::{Next, Route};
use crate::error::{AwsError, InitError};

/// `STATE_MACHINE_TYPE`: which kind of state machine drives the runs.
pub const STATE_MACHINE_TYPE_VAR: &str = "STATE_MACHINE_TYPE";
/// `SEGMENT_SECONDS`: how long an Express segment runs before the next one carries on.
pub const SEGMENT_SECONDS_VAR: &str = "SEGMENT_SECONDS";
/// The default of `SEGMENT_SECONDS`: a minute of Express's five left for the last move.
pub const DEFAULT_SEGMENT_SECONDS: u64 = 240;
/// Express stops an execution after five minutes; a move that could end later than this
/// starts in the next segment instead.
const EXPRESS_LIMIT_MS: u64 = 290_000;

/// Standard executions hold a whole run; Express ones hold segments of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineKind {
    Standard,
    Express,
}

impl MachineKind {
    /// `STANDARD` or `EXPRESS` (any case); unset is Express, the template's default.
    pub fn parse(value: Option<&str>) -> Result<Self, InitError> {
        match value.map(|v| v.trim().to_ascii_uppercase()).as_deref() {
            None | Some("") | Some("EXPRESS") => Ok(MachineKind::Express),
            Some("STANDARD") => Ok(MachineKind::Standard),
            Some(other) => Err(InitError::MachineType(other.to_owned())),
        }
    }
}

/// The execution name of a run's segment: the run id for the first (as on Standard, so a
/// run's first execution is found by its id), `<runId>-s<n>` after.
pub fn segment_name(run_id: &str, number: u32) -> String {
    match number {
        0 => run_id.to_owned(),
        n => format!("{run_id}-s{n}"),
    }
}

/// Where segments are claimed (the run's table).
#[async_trait]
pub trait Segments: Send + Sync {
    async fn claim(
        &self,
        run_id: &str,
        number: u32,
        execution: &str,
    ) -> Result<SegmentClaim, StoreError>;
    async fn latest(&self, run_id: &str) -> Result<Option<SegmentRecord>, StoreError>;
}

#[async_trait]
impl Segments for DynamoDbStore {
    async fn claim(
        &self,
        run_id: &str,
        number: u32,
        execution: &str,
    ) -> Result<SegmentClaim, StoreError> {
        self.claim_segment(run_id, number, execution).await
    }

    async fn latest(&self, run_id: &str) -> Result<Option<SegmentRecord>, StoreError> {
        self.latest_segment(run_id).await
    }
}

/// Starts an Express segment: an execution of `state_machine` named by the run and the
/// segment's number.
#[async_trait]
pub trait SegmentStarts: Send + Sync {
    async fn start(
        &self,
        state_machine: &str,
        run_id: &str,
        segment: u32,
        traceparent: Option<&str>,
    ) -> Result<(), AwsError>;
}

/// The deadlines of paused Express runs: nothing runs while an Express run waits for a person,
/// so the checkpoint's expiry is a one-time schedule that starts the next segment then (whose
/// claim closes the expired checkpoint). An answer given in time cancels it.
#[async_trait]
pub trait Deadlines: Send + Sync {
    /// Starts segment `segment` of the run at `at_ms` (a schedule kept already is fine).
    async fn schedule(
        &self,
        state_machine: &str,
        run_id: &str,
        segment: u32,
        at_ms: u64,
    ) -> Result<(), AwsError>;
    /// Cancels that start (one already done or absent is fine).
    async fn cancel(&self, run_id: &str, segment: u32) -> Result<(), AwsError>;
}

/// The schedule that starts segment `segment` of the run at its checkpoint's deadline.
pub fn deadline_name(run_id: &str, segment: u32) -> String {
    format!("run-{run_id}-s{segment}")
}

/// Where a segment stands at a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It is the run's latest segment, claimed at this time.
    Current { claimed_at_ms: u64 },
    /// A later segment exists: this one must stop.
    Superseded { by: u32 },
}

/// Segment `mine`'s standing, given the run's latest claimed segment.
pub fn standing(mine: u32, latest: Option<&SegmentRecord>, now_ms: u64) -> Standing {
    match latest {
        Some(l) if l.number > mine => Standing::Superseded { by: l.number },
        Some(l) if l.number == mine => Standing::Current {
            claimed_at_ms: l.claimed_at_ms,
        },
        // Not claimed (every segment claims first, so only a table edited by hand): treat it
        // as just begun rather than stop a run.
        _ => Standing::Current {
            claimed_at_ms: now_ms,
        },
    }
}

/// The route a segment takes after a move: a superseded one stops; one that has run
/// `limit_ms`, or whose next steps might outlast Express's limit, hands over to the next
/// segment before it plans or dispatches again. Routes that end the segment anyway pass.
pub fn hand_over(next: Next, standing: Standing, now_ms: u64, limit_ms: u64) -> Next {
    let claimed_at_ms = match standing {
        Standing::Superseded { .. } => {
            return Next {
                route: Route::Superseded,
                ..next
            };
        }
        Standing::Current { claimed_at_ms } => claimed_at_ms,
    };
    let elapsed = now_ms.saturating_sub(claimed_at_ms);
    let longest = match &next.route {
        Route::Plan => 0,
        Route::Dispatch { steps, .. } => steps.iter().map(|s| s.timeout_ms).max().unwrap_or(0),
        _ => return next,
    };
    // A move that could not fit even a fresh segment goes ahead here: handing it over would
    // only loop.
    let too_long =
        elapsed > 0 && elapsed + longest > EXPRESS_LIMIT_MS && longest < EXPRESS_LIMIT_MS;
    if elapsed >= limit_ms || too_long {
        Next {
            route: Route::Continue,
            ..next
        }
    } else {
        next
    }
}

/// The segment checks of `planner` and `advance`: a move of segment `n` first asks where it
/// stands; when it has none (Standard), it never stops or hands over.
#[derive(Clone)]
pub struct SegmentGuard {
    pub segments: Arc<dyn Segments>,
    /// `SEGMENT_SECONDS`, in ms.
    pub limit_ms: u64,
}

impl SegmentGuard {
    pub fn new(segments: Arc<dyn Segments>, limit_seconds: u64) -> Self {
        Self {
            segments,
            limit_ms: limit_seconds.saturating_mul(1000),
        }
    }

    /// Where segment `segment` of the run stands (none on Standard).
    pub async fn standing(
        &self,
        run_id: &str,
        segment: Option<u32>,
        now_ms: u64,
    ) -> Result<Option<Standing>, StoreError> {
        let Some(mine) = segment else {
            return Ok(None);
        };
        let latest = self.segments.latest(run_id).await?;
        Ok(Some(standing(mine, latest.as_ref(), now_ms)))
    }

    /// The route after a move, given the standing read before it.
    pub fn route(&self, next: Next, standing: Option<Standing>, now_ms: u64) -> Next {
        match standing {
            Some(s) => hand_over(next, s, now_ms, self.limit_ms),
            None => next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::StepTask;

    fn next(route: Route) -> Next {
        Next {
            run_id: "r1".into(),
            route,
        }
    }

    fn dispatch(timeout_ms: u64) -> Route {
        Route::Dispatch {
            steps: vec![StepTask {
                run_id: "r1".into(),
                step_id: "draft".into(),
                attempt: 1,
                capability_id: "generation".into(),
                function: "g".into(),
                timeout_ms,
            }],
            max_concurrency: 10,
        }
    }

    fn record(number: u32, claimed_at_ms: u64) -> SegmentRecord {
        SegmentRecord {
            number,
            execution: format!("exec-{number}"),
            claimed_at_ms,
        }
    }

    #[test]
    fn a_segment_superseded_by_a_later_one_stops_whatever_its_route() {
        // GIVEN segment 1 of a run whose latest claimed segment is 2
        let s = standing(1, Some(&record(2, 0)), 10);
        assert_eq!(s, Standing::Superseded { by: 2 });
        // WHEN its move ends, whatever the engine would do next THEN it stops
        for route in [Route::Plan, dispatch(1000), Route::Succeeded] {
            assert_eq!(
                hand_over(next(route), s, 10, 240_000).route,
                Route::Superseded
            );
        }
    }

    #[test]
    fn a_segment_past_its_limit_hands_over_before_planning_or_dispatching() {
        // GIVEN the current segment, claimed 241 s ago, with a 240 s limit
        let s = standing(3, Some(&record(3, 0)), 241_000);
        // WHEN the run would plan or dispatch THEN the next segment carries on
        assert_eq!(
            hand_over(next(Route::Plan), s, 241_000, 240_000).route,
            Route::Continue
        );
        assert_eq!(
            hand_over(next(dispatch(1)), s, 241_000, 240_000).route,
            Route::Continue
        );
        // AND routes that end the segment anyway are kept
        let awaiting = Route::Await {
            checkpoint_id: "cp".into(),
            approval_timeout_seconds: 60,
        };
        assert_eq!(
            hand_over(next(awaiting.clone()), s, 241_000, 240_000).route,
            awaiting
        );
        assert_eq!(
            hand_over(next(Route::Succeeded), s, 241_000, 240_000).route,
            Route::Succeeded
        );
    }

    #[test]
    fn steps_that_could_outlast_expresss_limit_start_in_a_fresh_segment() {
        // GIVEN a segment 200 s old, under its 240 s limit
        let s = standing(0, Some(&record(0, 0)), 200_000);
        // WHEN it would dispatch a step allowed 120 s THEN it hands over (200 + 120 > 290)
        assert_eq!(
            hand_over(next(dispatch(120_000)), s, 200_000, 240_000).route,
            Route::Continue
        );
        // AND a short step goes ahead here
        assert_eq!(
            hand_over(next(dispatch(30_000)), s, 200_000, 240_000)
                .route
                .name(),
            "dispatch"
        );
        // AND a step no segment could hold goes ahead rather than hand over for ever
        assert_eq!(
            hand_over(next(dispatch(400_000)), s, 200_000, 240_000)
                .route
                .name(),
            "dispatch"
        );
    }

    #[test]
    fn a_zero_limit_hands_over_at_every_move() {
        let s = standing(0, Some(&record(0, 5)), 5);
        assert_eq!(hand_over(next(Route::Plan), s, 5, 0).route, Route::Continue);
    }

    #[test]
    fn segment_names_start_with_the_run_id() {
        assert_eq!(segment_name("r1", 0), "r1");
        assert_eq!(segment_name("r1", 2), "r1-s2");
    }

    #[test]
    fn the_machine_type_is_express_unless_standard_is_asked_for() {
        assert_eq!(MachineKind::parse(None).unwrap(), MachineKind::Express);
        assert_eq!(
            MachineKind::parse(Some("standard")).unwrap(),
            MachineKind::Standard
        );
        let bad = MachineKind::parse(Some("FAST")).unwrap_err().to_string();
        assert!(
            bad.contains("STATE_MACHINE_TYPE") && bad.contains("FAST"),
            "{bad}"
        );
    }
}
