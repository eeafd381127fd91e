//! The AWS cost of orchestrating one run, at list prices.
//!
//! What is measured and what is modelled:
//! - **Measured**: DynamoDB requests, items, bytes, WRU and RRU of one reference run through
//!   the real `DynamoDbStore` on the emulator (see [`crate::ddb`]); the events written.
//! - **Measured on the emulated stack**, when a figures file of `tests/aws_run.rs` is given
//!   (see [`crate::emulated`]): Step Functions state transitions, Lambda invocations and their
//!   billed durations, from the execution history of one reference run.
//! - **Modelled** otherwise: the same, counted along `infra/statemachine.asl.json` from what
//!   the engine did in the DynamoDB run (see [`state_transitions`]). Lambda time spent waiting
//!   on the model is always modelled: the scheduled model time of the reference workload.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::emulated::EmulatedRun;

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
        item: "sfn_express_request",
        unit: "Step Functions Express request (execution started)",
        usd: 1.00 / 1_000_000.0,
    },
    Price {
        item: "sfn_express_gb_s",
        unit: "GB-second of Step Functions Express (64 MB steps, 100 ms steps; first 1000 GB-hours)",
        usd: 0.000_016_67,
    },
    Price {
        item: "cloudwatch_logs_ingest_gb",
        unit: "GB of CloudWatch Logs ingested (standard class)",
        usd: 0.50,
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
    /// The template's `FunctionMemorySize` (its default).
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

/// Where a figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    /// Measured by the benchmark itself (the DynamoDB run through `DynamoDbStore`).
    #[serde(rename = "measured")]
    Measured,
    /// Measured on the emulated AWS stack (`tests/aws_run.rs`: moto + `cargo lambda watch`).
    #[serde(rename = "measured (emulated stack)")]
    Emulated,
    /// Counted along the ASL from the engine's actions, or assumed ([`LambdaAssumptions`]).
    #[serde(rename = "modelled")]
    Modelled,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Measured => "measured",
            Source::Emulated => "measured (emulated stack)",
            Source::Modelled => "modelled",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    /// The price it is billed at (an item of [`PRICES`]).
    pub item: &'static str,
    pub what: &'static str,
    pub quantity: f64,
    pub unit_usd: f64,
    pub usd: f64,
    pub source: Source,
}

impl CostLine {
    /// `quantity` of `item` at its price.
    pub fn priced(item: &'static str, what: &'static str, quantity: f64, source: Source) -> Self {
        let unit_usd = price(item);
        Self {
            item,
            what,
            quantity,
            unit_usd,
            usd: quantity * unit_usd,
            source,
        }
    }
}

/// The Step Functions and Lambda side of one run: state transitions, invocations and billed
/// function time (without the time spent waiting on the model).
#[derive(Debug, Clone, Serialize)]
pub struct Orchestration {
    pub state_transitions: u64,
    pub lambda_invocations: u64,
    /// Billed function time, ms, without the model wait.
    pub function_ms: u64,
    /// Where the transitions and invocations come from.
    pub source: Source,
    /// Where the function time comes from (modelled when the emulated run's history lacked a
    /// duration).
    pub function_ms_source: Source,
}

impl Orchestration {
    /// Counted along the ASL from the run's shape, function time from the assumptions.
    pub fn modelled(shape: &RunShape, lambda: &LambdaAssumptions) -> Self {
        let workers = shape.planner_calls + shape.step_invocations;
        let advances = advance_invocations(shape);
        Self {
            state_transitions: state_transitions(shape),
            lambda_invocations: workers + advances,
            function_ms: workers * lambda.worker_overhead_ms + advances * lambda.advance_ms,
            source: Source::Modelled,
            function_ms_source: Source::Modelled,
        }
    }

    /// From the emulated run; its function time when the history gave every invocation's
    /// duration, else the assumptions' for the same shape.
    pub fn emulated(run: &EmulatedRun, shape: &RunShape, lambda: &LambdaAssumptions) -> Self {
        let (function_ms, function_ms_source) = match run.billed_ms() {
            Some(ms) => (ms, Source::Emulated),
            None => (Self::modelled(shape, lambda).function_ms, Source::Modelled),
        };
        Self {
            state_transitions: run.state_transitions(),
            lambda_invocations: run.lambda_invocations(),
            function_ms,
            source: Source::Emulated,
            function_ms_source,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CostModel {
    pub prices_as_of: &'static str,
    pub shape: RunShape,
    pub lambda: LambdaAssumptions,
    pub orchestration: Orchestration,
    pub lambda_gb_s: f64,
    pub lines: Vec<CostLine>,
    pub total_usd: f64,
    /// The same without Lambda time spent waiting on the model.
    pub total_without_model_wait_usd: f64,
    /// The same run on an Express state machine (the template's default).
    pub express: ExpressCost,
}

/// What Express bills where Standard bills transitions (infra/statemachine.express.asl.json):
/// executions (one per segment) and their duration at 64 MB, every state logged to CloudWatch
/// Logs, and per segment one `claim` invocation, one claim write and a segment check (one
/// strongly consistent read) per `planner` and `advance` move.
#[derive(Debug, Clone, Serialize)]
pub struct ExpressCost {
    /// Executions: the run's modelled duration over `SegmentSeconds` (240 s), rounded up.
    pub segments: u64,
    /// Billed duration of all segments, ms: the function time plus the model wait, as if
    /// every task ran one after the other (an upper bound), rounded up to 100 ms a segment.
    pub billed_ms: u64,
    pub lambda_invocations: u64,
    /// Log events (about two per state entered, three per Lambda task, two per execution) at
    /// [`EXPRESS_LOG_EVENT_BYTES`] each.
    pub log_events: u64,
    pub wru: f64,
    pub rru: f64,
    pub lines: Vec<CostLine>,
    pub total_usd: f64,
}

/// Bytes of one Express log event without execution data (`IncludeExecutionData: false`):
/// modelled from the event's fixed fields (ids, names, timestamps, ARNs).
pub const EXPRESS_LOG_EVENT_BYTES: u64 = 350;
/// Express bills memory in 64 MB steps; these definitions carry ids only, so the smallest.
const EXPRESS_MEMORY_GB: f64 = 64.0 / 1024.0;
const SEGMENT_MS: u64 = 240_000;

/// State transitions of one run along `infra/statemachine.asl.json`: `Plan` (each planner
/// call) -> `Route`; `Route` -> `Dispatch` (a Map: one `RunStep` per step) -> `Advance` ->
/// `Route`; at the end `Route` -> `Notify` -> `Ended` -> `Done`. So a `Route` after every
/// `Plan` and every `Advance`, an `Advance` after every `Dispatch`, and three closing states.
/// Retries are not in the shape (each would add one transition).
pub fn state_transitions(s: &RunShape) -> u64 {
    let plan = s.planner_calls;
    let dispatch = s.dispatches;
    let advance = s.dispatches;
    let route = plan + advance;
    plan + route + dispatch + s.step_invocations + advance + 3
}

/// `advance` invocations along the ASL: one `Advance` per `Dispatch`, and `Notify`.
pub fn advance_invocations(s: &RunShape) -> u64 {
    s.dispatches + 1
}

/// The cost of one run: DynamoDB from the measured units and bytes; Step Functions and Lambda
/// from `emulated` when given, else modelled from `shape`; the Lambda time spent waiting on
/// the model from `shape.model_ms` (the emulated run's mock answers at once, so its durations
/// hold almost none of it).
pub fn model(
    shape: RunShape,
    lambda: LambdaAssumptions,
    emulated: Option<&EmulatedRun>,
    wru: f64,
    rru: f64,
    stored_bytes: u64,
) -> CostModel {
    let orchestration = match emulated {
        Some(run) => Orchestration::emulated(run, &shape, &lambda),
        None => Orchestration::modelled(&shape, &lambda),
    };
    let gb = lambda.memory_mb as f64 / 1024.0;
    let function_gb_s = gb * orchestration.function_ms as f64 / 1000.0;
    let wait_gb_s = gb * shape.model_ms as f64 / 1000.0;
    let line = CostLine::priced;
    let lines = vec![
        line(
            "sfn_standard_transition",
            "Step Functions state transitions",
            orchestration.state_transitions as f64,
            orchestration.source,
        ),
        line(
            "lambda_requests",
            "Lambda requests",
            orchestration.lambda_invocations as f64,
            orchestration.source,
        ),
        line(
            "lambda_arm64_gb_s",
            "Lambda GB-s, function time",
            function_gb_s,
            orchestration.function_ms_source,
        ),
        line(
            "lambda_arm64_gb_s",
            "Lambda GB-s, waiting on the model",
            wait_gb_s,
            Source::Modelled,
        ),
        line("dynamodb_wru", "DynamoDB WRU", wru, Source::Measured),
        line("dynamodb_rru", "DynamoDB RRU", rru, Source::Measured),
        line(
            "dynamodb_storage_gb_month",
            "DynamoDB storage, GB-month",
            stored_bytes as f64 / 1e9,
            Source::Measured,
        ),
    ];
    let total: f64 = lines.iter().map(|l| l.usd).sum();
    let lambda_wait = wait_gb_s * price("lambda_arm64_gb_s");
    let express = express(&shape, &lambda, &orchestration, [wru, rru], stored_bytes);
    CostModel {
        express,
        prices_as_of: PRICES_AS_OF,
        shape,
        lambda,
        orchestration,
        lambda_gb_s: function_gb_s + wait_gb_s,
        lines,
        total_usd: total,
        total_without_model_wait_usd: total - lambda_wait,
    }
}

/// The run on Express, from the same shape, orchestration and DynamoDB figures.
fn express(
    shape: &RunShape,
    lambda: &LambdaAssumptions,
    o: &Orchestration,
    [wru, rru]: [f64; 2],
    stored_bytes: u64,
) -> ExpressCost {
    let busy_ms = o.function_ms + shape.model_ms;
    let segments = busy_ms / SEGMENT_MS + 1;
    let claims_ms = segments * lambda.advance_ms;
    let billed_ms = (busy_ms + claims_ms).div_ceil(100) * 100 + (segments - 1) * 100;
    let lambda_invocations = o.lambda_invocations + segments;
    // Claim and Route open each segment; Standard's states otherwise.
    let states = o.state_transitions + 2 * segments;
    let log_events = 2 * states + 3 * lambda_invocations + 2 * segments;
    let checks = (shape.planner_calls + advance_invocations(shape)) as f64;
    let mut cost = ExpressCost {
        segments,
        billed_ms,
        lambda_invocations,
        log_events,
        wru: wru + segments as f64,
        rru: rru + checks,
        lines: Vec::new(),
        total_usd: 0.0,
    };
    cost.lines = express_lines(shape, lambda, o, &cost, claims_ms, stored_bytes);
    cost.total_usd = cost.lines.iter().map(|l| l.usd).sum();
    cost
}

/// The priced lines of `e`; `claims_ms` is the function time its claims add.
fn express_lines(
    shape: &RunShape,
    lambda: &LambdaAssumptions,
    o: &Orchestration,
    e: &ExpressCost,
    claims_ms: u64,
    stored_bytes: u64,
) -> Vec<CostLine> {
    let gb = lambda.memory_mb as f64 / 1024.0;
    let line = CostLine::priced;
    vec![
        line(
            "sfn_express_request",
            "Express executions (segments)",
            e.segments as f64,
            Source::Modelled,
        ),
        line(
            "sfn_express_gb_s",
            "Express GB-s (64 MB)",
            EXPRESS_MEMORY_GB * e.billed_ms as f64 / 1000.0,
            Source::Modelled,
        ),
        line(
            "cloudwatch_logs_ingest_gb",
            "Express execution logs, GB",
            (e.log_events * EXPRESS_LOG_EVENT_BYTES) as f64 / 1e9,
            Source::Modelled,
        ),
        line(
            "lambda_requests",
            "Lambda requests (+ claims)",
            e.lambda_invocations as f64,
            o.source,
        ),
        line(
            "lambda_arm64_gb_s",
            "Lambda GB-s, function time (+ claims)",
            gb * (o.function_ms + claims_ms) as f64 / 1000.0,
            o.function_ms_source,
        ),
        line(
            "lambda_arm64_gb_s",
            "Lambda GB-s, waiting on the model",
            gb * shape.model_ms as f64 / 1000.0,
            Source::Modelled,
        ),
        line(
            "dynamodb_wru",
            "DynamoDB WRU (+ segment claims)",
            e.wru,
            Source::Measured,
        ),
        line(
            "dynamodb_rru",
            "DynamoDB RRU (+ segment checks)",
            e.rru,
            Source::Measured,
        ),
        line(
            "dynamodb_storage_gb_month",
            "DynamoDB storage, GB-month",
            stored_bytes as f64 / 1e9,
            Source::Measured,
        ),
    ]
}

impl CostModel {
    /// The model as `bench-driver all` prints it: where the Step Functions and Lambda figures
    /// come from, the lines and the totals. `emulated` is the run the model was given (and
    /// the file it came from), or `None` with the path where measured figures would be read.
    pub fn report(&self, emulated: Option<&EmulatedRun>, figures: &Path) -> String {
        let mut out = String::new();
        match emulated {
            Some(run) => self.write_measured(&mut out, run, figures),
            None => self.write_modelled(&mut out, figures),
        }
        self.write_lines(&mut out);
        self.write_express(&mut out);
        out
    }

    /// The same run on Express, line by line.
    fn write_express(&self, out: &mut String) {
        let e = &self.express;
        let _ = writeln!(
            out,
            "  on Express (the default; infra/statemachine.express.asl.json): {} segment(s), {} billed ms at 64 MB, {} Lambda invocations, {} log events x {} bytes (modelled), {:.1} WRU, {:.1} RRU",
            e.segments,
            e.billed_ms,
            e.lambda_invocations,
            e.log_events,
            EXPRESS_LOG_EVENT_BYTES,
            e.wru,
            e.rru
        );
        write_priced(out, &e.lines);
        let _ = writeln!(
            out,
            "  total per run on Express: ${:.6} (${:.3} per 1000 runs; target <= $0.15); on Standard ${:.3} per 1000 runs",
            e.total_usd,
            e.total_usd * 1000.0,
            self.total_usd * 1000.0
        );
    }

    /// Where the figures come from when the emulated AWS run measured them.
    fn write_measured(&self, out: &mut String, run: &EmulatedRun, figures: &Path) {
        let o = &self.orchestration;
        let by_function: Vec<String> = run
            .invocations_by_function()
            .iter()
            .map(|(f, n)| format!("{n} {f}"))
            .collect();
        let _ = writeln!(
            out,
            "  measured (emulated stack: {}, run {}): {} states entered + {} task {} = {} Standard state transitions; {} Lambda invocations ({}); function time {} billed ms at {} MB arm64 ({}; debug binaries under cargo lambda watch, durations from the execution history, so an upper bound)",
            figures.display(),
            run.run_id,
            run.states_entered.values().sum::<u64>(),
            run.task_retries,
            if run.task_retries == 1 {
                "retry"
            } else {
                "retries"
            },
            o.state_transitions,
            o.lambda_invocations,
            by_function.join(", "),
            o.function_ms,
            self.lambda.memory_mb,
            match o.function_ms_source {
                Source::Emulated => "each invocation rounded up to 1 ms".to_owned(),
                _ => format!(
                    "modelled: the history lacks a duration; {} ms per advance, {} ms per planner/specialist",
                    self.lambda.advance_ms, self.lambda.worker_overhead_ms
                ),
            },
        );
        let _ = writeln!(
            out,
            "  the emulated run's own figures: {} DynamoDB write and {} read requests (the streamer's polling included), {} frames, {} ms wall",
            run.dynamodb_write_requests,
            run.dynamodb_read_requests,
            run.frames.values().sum::<u64>(),
            run.wall_ms,
        );
    }

    /// Where the figures come from without an emulated run: the state machine, modelled.
    fn write_modelled(&self, out: &mut String, figures: &Path) {
        let o = &self.orchestration;
        let s = &self.shape;
        let _ = writeln!(
            out,
            "  modelled along infra/statemachine.asl.json from the engine's actions in the DynamoDB run: {} planner calls, {} step invocations in {} dispatches -> {} Standard state transitions (no retries), {} Lambda invocations ({} advance incl. Notify); function time {} ms at {} MB arm64 ({} ms per advance, {} ms per planner/specialist, assumed)",
            s.planner_calls,
            s.step_invocations,
            s.dispatches,
            o.state_transitions,
            o.lambda_invocations,
            advance_invocations(s),
            o.function_ms,
            self.lambda.memory_mb,
            self.lambda.advance_ms,
            self.lambda.worker_overhead_ms,
        );
        let _ = writeln!(
            out,
            "  (no {}: for measured transitions, invocations and durations run `AWS_E2E=1 bench/run.sh`, or `ORCHESTRATOR_AWS_E2E=1 cargo test -p orchestrator-aws --test aws_run -- --nocapture` then `--aws-figures FILE`)",
            figures.display()
        );
    }

    /// The model wait, the priced lines and the totals.
    fn write_lines(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  model wait: {} ms, the reference workload's scheduled model time, billed at {} MB (modelled)",
            self.shape.model_ms, self.lambda.memory_mb
        );
        let _ = writeln!(
            out,
            "  {:<36} {:>14} {:>14} {:>12}  source",
            "item", "quantity", "unit USD", "USD"
        );
        write_priced(out, &self.lines);
        let _ = writeln!(
            out,
            "  total per run: ${:.6} (${:.2} per 1000 runs); without Lambda time spent waiting on the model: ${:.6}",
            self.total_usd,
            self.total_usd * 1000.0,
            self.total_without_model_wait_usd
        );
    }
}

/// One line per priced item, in the columns of the report's header.
fn write_priced(out: &mut String, lines: &[CostLine]) {
    for l in lines {
        let _ = writeln!(
            out,
            "  {:<36} {:>14.4} {:>14.10} {:>12.8}  {}",
            l.what, l.quantity, l.unit_usd, l.usd, l.source
        );
    }
}
