//! Adapters for the [`RunStore`] and [`EventLog`] ports: [`SqliteStore`] (one file: local
//! runs, the CLI, tests) and [`DynamoDbStore`] (the AWS deployment). Both pass the same
//! conformance suite (`tests/conformance`).
//!
//! [`RunStore`]: orchestrator_core::ports::RunStore
//! [`EventLog`]: orchestrator_core::ports::EventLog

mod codec;
mod dynamodb;
mod sqlite;

pub use dynamodb::{
    ConfigError, DEFAULT_EVENTS_TTL_DAYS, DEFAULT_MAX_ATTEMPTS, DEFAULT_TABLE, DynamoDbConfig,
    DynamoDbStore, SegmentClaim, SegmentRecord,
};
pub use sqlite::{
    BUSY_TIMEOUT, CROSS_PROCESS_POLL, DEFAULT_CALL_RETENTION, SCHEMA_VERSION, SqliteStore,
};
