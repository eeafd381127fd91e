//! The AWS cost of orchestrating one run, at list prices.
//!
//! What is measured and what is modelled:
//! - **Measured**: DynamoDB requests, items, bytes, WRU and RRU of one reference run through
//!   the real `DynamoDbStore` on the emulator (see [`crate::ddb`]); the events written.
//! - **Modelled**: Step Functions state transitions and Lambda invocations and durations. The
//!   functions and the state machine are not built yet; they are derived from what the engine
//!   did in the same run (its persisted transitions, planner calls and step dispatches), along
//!   the state machine of DESIGN.md ("AWS shape"):
//!   `Plan -> Advance -> Route -> Dispatch(Map) -> Advance ... -> Succeed`.

use serde::Serialize;

/// When the prices below were read from the AWS pricing pages (us-east-1, on-demand list
/// prices, no free tier). Check them before relying on the figures.
pub const PRICES_AS_OF: &str = "2025-06 (us-east-1 list prices, without free tier)";

/// One line of the price table.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Price {
    pub item: &'static str,
    pub unit: &'static str,
    pub usd: f64,
}

/// Every price the model uses, in one table.
pub const PRICES: &[Price] = &[
    Price {
        item: "lambda_arm64_gb_s",
        unit: "GB-second of Lambda on arm64 (first 7.5 billion GB-s per month)",
        usd: 0.000_013_333_4,
    },
    Price {
        item: "lambda_requests",
        unit: "Lambda request",
        usd: 0.20 / 1_000_000.0,
    },
    Price {
        item: "sfn_standard_transition",
        unit: "Step Functions Standard state transition",
        usd: 0.025 / 1_000.0,
    },
    Price {
        item: "dynamodb_wru",
        unit: "DynamoDB on-demand write request unit",
        usd: 0.625 / 1_000_000.0,
    },
    Price {
        item: "dynamodb_rru",
        unit: "DynamoDB on-demand read request unit",
        usd: 0.125 / 1_000_000.0,
    },
    Price {
        item: "dynamodb_storage_gb_month",
        unit: "DynamoDB Standard table storage, GB-month",
        usd: 0.25,
    },
];

pub fn price(item: &str) -> f64 {
    PRICES
        .iter()
        .find(|p| p.item == item)
        .map_or(0.0, |p| p.usd)
}

/// What the engine did in one run, counted by the benchmark.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunShape {
    /// Engine transitions: the first (create) plus every persisted one.
    pub advances: u64,
    pub planner_calls: u64,
    /// Specialist invocations (handoffs that occurred), finalize included.
    pub step_invocations: u64,
    /// Dispatch actions (Map states); steps of one dispatch run in one Map.
    pub dispatches: u64,
    /// Scheduled model time of each planner/specialist invocation, summed, ms.
    pub model_ms: u64,
}

/// The assumptions of the Lambda model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LambdaAssumptions {
    pub memory_mb: u64,
    /// Billed time of one `advance` invocation: load state, apply, one transactional write.
    pub advance_ms: u64,
    /// Billed time a planner/specialist adds to its model time (reads, writes, parsing).
    pub worker_overhead_ms: u64,
}

impl Default for LambdaAssumptions {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            advance_ms: 25,
            worker_overhead_ms: 25,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    pub item: &'static str,
    pub quantity: f64,
    pub unit_usd: f64,
    pub usd: f64,
    pub measured: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostModel {
    pub prices_as_of: &'static str,
    pub shape: RunShape,
    pub lambda: LambdaAssumptions,
    pub state_transitions: u64,
    pub lambda_invocations: u64,
    pub lambda_gb_s: f64,
    pub lines: Vec<CostLine>,
    pub total_usd: f64,
    /// The same without Lambda time spent waiting on the model.
    pub total_without_model_wait_usd: f64,
}

/// State transitions of the Standard state machine for a run of this shape: every Advance is
/// followed by its Route choice; each planner call is a Plan task state; each dispatch is a Map
/// state and each of its iterations one task state; plus the final Succeed.
pub fn state_transitions(s: &RunShape) -> u64 {
    2 * s.advances + s.planner_calls + s.dispatches + s.step_invocations + 1
}

pub fn model(
    shape: RunShape,
    lambda: LambdaAssumptions,
    wru: f64,
    rru: f64,
    stored_bytes: u64,
) -> CostModel {
    let transitions = state_transitions(&shape);
    let invocations = shape.advances + shape.planner_calls + shape.step_invocations;
    let gb = lambda.memory_mb as f64 / 1024.0;
    let worker_ms =
        shape.model_ms + (shape.planner_calls + shape.step_invocations) * lambda.worker_overhead_ms;
    let advance_ms = shape.advances * lambda.advance_ms;
    let gb_s = gb * (worker_ms + advance_ms) as f64 / 1000.0;
    let gb_s_no_wait = gb * (worker_ms - shape.model_ms + advance_ms) as f64 / 1000.0;
    let line = |item: &'static str, quantity: f64, measured: bool| {
        let unit_usd = price(item);
        CostLine {
            item,
            quantity,
            unit_usd,
            usd: quantity * unit_usd,
            measured,
        }
    };
    let lines = vec![
        line("sfn_standard_transition", transitions as f64, false),
        line("lambda_requests", invocations as f64, false),
        line("lambda_arm64_gb_s", gb_s, false),
        line("dynamodb_wru", wru, true),
        line("dynamodb_rru", rru, true),
        line("dynamodb_storage_gb_month", stored_bytes as f64 / 1e9, true),
    ];
    let total: f64 = lines.iter().map(|l| l.usd).sum();
    let lambda_wait = (gb_s - gb_s_no_wait) * price("lambda_arm64_gb_s");
    CostModel {
        prices_as_of: PRICES_AS_OF,
        shape,
        lambda,
        state_transitions: transitions,
        lambda_invocations: invocations,
        lambda_gb_s: gb_s,
        lines,
        total_usd: total,
        total_without_model_wait_usd: total - lambda_wait,
    }
}
