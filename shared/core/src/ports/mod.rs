//! The ports: what the engine's drivers need from the outside world. Adapters live in other
//! crates (store, llm); fakes for tests live behind the `test-util` feature.
//!
//! One module per port; everything is re-exported here, so `ports::X` names each of them.

mod calls;
mod clock;
mod model;
mod store;

pub use calls::{CallLog, CallReply, CallUnit, RecordedCall};
pub use clock::{Clock, SystemClock};
pub use model::{
    ChatMessage, ChatRole, Model, ModelError, ModelInfo, ModelRequest, ModelResponse, Purpose,
    ReplySchema, RetryNote, StreamItem,
};
pub use store::{
    ActiveRun, Claim, Committed, Created, EventLog, Lease, OpenedStep, RunCursor, RunStore,
    StepOpening, StoreError, TransitionWrite, clamp_wait,
};
