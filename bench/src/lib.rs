//! Benchmarks of the orchestrator: a scripted, scheduled OpenAI-compatible mock LLM, the
//! reference workload, a store wrapper that counts, a DynamoDB capacity meter, process usage, a
//! model that records the calls made of it, the figures of a run on the emulated AWS stack, and
//! the AWS cost model, and the serve path measured from outside. The binaries (`mock-llm`, `bench-driver`) and
//! `bench/run.sh` put them together; see bench/README.md.

pub mod cost;
pub mod counting;
pub mod ddb;
pub mod emulated;
pub mod mock;
pub mod recording;
pub mod rusage;
pub mod serve;
pub mod timing;
pub mod workload;
