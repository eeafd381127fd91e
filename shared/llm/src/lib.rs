//! Model port adapters. For now the built-in Offline model; real providers slot in beside it.

pub mod offline;

pub use offline::OfflineModel;
