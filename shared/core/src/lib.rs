//! The orchestrator's domain: types, plan patches, the pure engine, ports and the SSE wire
//! encoding. No AWS, HTTP or LLM SDK here.

pub mod batch;
pub mod engine;
pub mod event;
pub mod patch;
pub mod ports;
pub mod report;
pub mod tools;
pub mod types;

pub use engine::{
    Checkpoint, Dispatch, Engine, EngineConfig, Input, Move, ReplanReason, RunState, Transition,
};
pub use event::{Event, EventKind, Frame};
pub use patch::{PlanPatch, normalize_patch};
pub use types::*;

#[cfg(feature = "test-util")]
pub mod fakes;
