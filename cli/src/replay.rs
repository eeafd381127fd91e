//! `orchestrator replay` and `orchestrator fork`: a finished run again from its record, with
//! no model (a regression test for prompts and code), or from one of its steps on.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::anyhow;
use orchestrator_agents::Prompts;
use orchestrator_core::ports::Model;
use orchestrator_llm::Provider;
use orchestrator_runner::Runner;
use orchestrator_runner::replay::{self, ReplayOutcome, Replayed};
use serde_json::json;

use crate::config::Config;
use crate::terminal;

/// The width of each column of a side-by-side request.
const COLUMN: usize = 58;

/// `orchestrator replay`: exit 0 when the log came out identical, 1 when it did not.
pub async fn replay(
    config: &Config,
    runner: &Runner,
    run_id: &str,
    prompts: Arc<Prompts>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let recorded = replay::load(runner, run_id).await?;
    let calls = recorded.calls.len();
    if !json {
        eprintln!("replaying run {run_id} from its record ({calls} model calls recorded)");
    }
    let outcome = replay::replay(runner, recorded, prompts, config.record.redact.clone()).await?;
    if json {
        println!("{}", summary(run_id, &outcome));
    } else {
        report(run_id, &outcome);
    }
    Ok(match outcome.replayed {
        Replayed::Identical { .. } => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// One JSON object: what `--json` prints, for scripts and CI.
pub fn summary(original: &str, outcome: &ReplayOutcome) -> serde_json::Value {
    let base = |run_id: &str, verdict: &str| {
        json!({
            "replayOf": original,
            "runId": run_id,
            "outcome": verdict,
            "status": outcome.status.as_str(),
            "modelCalls": 0,
            "answeredFromRecord": outcome.served,
        })
    };
    match &outcome.replayed {
        Replayed::Identical {
            run_id,
            frames,
            interleaved,
        } => {
            let mut v = base(run_id, "identical");
            v["frames"] = json!(frames);
            v["interleaved"] = json!(interleaved);
            v
        }
        Replayed::Diverged { run_id, divergence } => {
            let mut v = base(run_id, "diverged");
            v["unit"] = json!(divergence.unit);
            v["index"] = json!(divergence.index);
            v["recorded"] = json!(divergence.recorded);
            v["actual"] = json!(divergence.actual);
            v
        }
        Replayed::Differs {
            run_id,
            index,
            original,
            replayed,
        } => {
            let mut v = base(run_id, "differs");
            v["frame"] = json!(index + 1);
            v["original"] = json!(original);
            v["replayed"] = json!(replayed);
            v
        }
    }
}

fn report(original: &str, outcome: &ReplayOutcome) {
    let served = outcome.served;
    match &outcome.replayed {
        Replayed::Identical {
            run_id,
            frames,
            interleaved,
        } => println!(
            "replay {run_id} of {original}: identical event log ({frames} frames{}); 0 model calls, {served} answered from the record",
            if *interleaved {
                ", steps that ran at the same time interleaved otherwise"
            } else {
                ""
            }
        ),
        Replayed::Diverged { run_id, divergence } => {
            println!("replay {run_id}: {}", divergence.headline(original, served));
            print!("{}", terminal::block(&divergence.side_by_side(COLUMN)));
        }
        Replayed::Differs {
            run_id,
            index,
            original: before,
            replayed,
        } => {
            println!(
                "replay {run_id} of {original}: every request matched its record, but the event log differs at frame {}",
                index + 1
            );
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .map_or("(none: the log had ended)".to_owned(), |v| v.to_string())
            };
            println!("  original: {}", terminal::line(&show(before)));
            println!("  replayed: {}", terminal::line(&show(replayed)));
        }
    }
}

/// What `orchestrator fork` was asked for.
pub struct ForkArgs {
    pub run_id: String,
    pub from: String,
    pub prompts: Arc<Prompts>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub json: bool,
}

/// `orchestrator fork`: the new run, followed to its end like `orchestrator run`.
pub async fn fork(config: &Config, runner: &Runner, args: ForkArgs) -> anyhow::Result<ExitCode> {
    let recorded = replay::load(runner, &args.run_id).await?;
    let prompts = args.prompts;
    let live = live_model(
        config,
        runner,
        args.provider.as_deref(),
        args.model.as_deref(),
    )
    .await?;
    let info = live.info();
    let forked = replay::fork(runner, recorded, &args.from, live, prompts).await?;
    let run_id = forked.launch.state.run_id.clone();
    let mode = forked.launch.state.request.mode;
    eprintln!(
        "fork {run_id} of {} from step {}: {} units reused from the record, the rest asks {}/{}",
        args.run_id,
        terminal::line(&args.from),
        forked.reused.len(),
        terminal::line(&info.provider),
        terminal::line(&info.model)
    );
    let code = crate::follow(
        &forked.runner,
        &run_id,
        Some(forked.launch),
        mode,
        args.json,
    )
    .await?;
    eprintln!(
        "fork {run_id}: {} model calls, {} answered from the record",
        forked.tape.delegated(),
        forked.tape.served()
    );
    Ok(code)
}

/// The model a fork calls from its step on: the configured one, or the one the flags name;
/// its calls are recorded for the new run.
async fn live_model(
    config: &Config,
    runner: &Runner,
    provider: Option<&str>,
    model: Option<&str>,
) -> anyhow::Result<Arc<dyn Model>> {
    let mut llm = config.llm.clone();
    if let Some(p) = provider {
        llm.provider = match p.trim().to_ascii_lowercase().as_str() {
            "offline" => Provider::Offline,
            "openai" => Provider::OpenAi,
            "bedrock" => Provider::Bedrock,
            other => {
                return Err(anyhow!(
                    "--provider {:?} is unknown; use offline, openai or bedrock",
                    terminal::line(other)
                ));
            }
        };
    }
    if let Some(m) = model {
        llm.model = m.to_owned();
    } else if provider.is_some() && llm.provider != config.llm.provider {
        return Err(anyhow!(
            "--provider {} needs --model too (the configured MODEL_ID is for {})",
            llm.provider.as_str(),
            config.llm.provider.as_str()
        ));
    }
    let model = orchestrator_llm::build_model(&llm).await?;
    Ok(config.record.wrap(model, runner.store().clone()))
}

/// The models `serve` forks with: the configured one, or another model id of its provider;
/// their calls are recorded for the new run.
pub struct Forks {
    config: Config,
    store: Arc<dyn orchestrator_runner::Store>,
    prompts: Arc<Prompts>,
}

impl Forks {
    pub fn new(
        config: &Config,
        store: Arc<dyn orchestrator_runner::Store>,
        prompts: Arc<Prompts>,
    ) -> Self {
        Self {
            config: config.clone(),
            store,
            prompts,
        }
    }
}

#[async_trait::async_trait]
impl orchestrator_api::ForkModels for Forks {
    async fn model(&self, model: Option<&str>) -> Result<Arc<dyn Model>, String> {
        let mut llm = self.config.llm.clone();
        if let Some(m) = model {
            llm.model = m.to_owned();
        }
        let built = orchestrator_llm::build_model(&llm)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.config.record.wrap(built, self.store.clone()))
    }

    fn prompts(&self) -> Prompts {
        Prompts::clone(&self.prompts)
    }
}
