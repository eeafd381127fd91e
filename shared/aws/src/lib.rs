//! The AWS side of the orchestrator: the state machine's payloads ([`contract`]), the routing
//! read from a stored run ([`route`]), what each function does ([`handlers`]), the streamer's
//! Step Functions control ([`control`]), Lambda logs and EMF metrics ([`telemetry`]) and the
//! start-up every function shares ([`bootstrap`]). The binaries in functions/ only wire these.

pub mod bootstrap;
pub mod completion;
pub mod contract;
pub mod control;
pub mod error;
pub mod handlers;
pub mod route;
pub mod segments;
pub mod telemetry;
pub mod trigger;

pub use control::{AwsApprovalWaits, SfnControl};
pub use error::FunctionError;
