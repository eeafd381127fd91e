//! The errors a function raises to Step Functions. Their `errorType` strings are stable: the
//! ASL's Retry and Catch name them (functions/README.md lists them).

use orchestrator_core::ports::StoreError;
use orchestrator_runner::{RunError, Transient};

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{0}")]
    SpecialistThrottled(String),
    #[error("{0}")]
    SpecialistUnavailable(String),
    #[error("{0}")]
    PlannerThrottled(String),
    #[error("{0}")]
    PlannerUnavailable(String),
    #[error("{0}")]
    StoreUnavailable(String),
    #[error("{0}")]
    StoreConflict(String),
    #[error("{0}")]
    EventsUnavailable(String),
    #[error("run {0} not found")]
    RunNotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    TriggerUnavailable(String),
}

impl FunctionError {
    /// The `errorType` Step Functions sees.
    pub fn error_type(&self) -> &'static str {
        match self {
            FunctionError::SpecialistThrottled(_) => "Specialist.ModelThrottled",
            FunctionError::SpecialistUnavailable(_) => "Specialist.ModelUnavailable",
            FunctionError::PlannerThrottled(_) => "Planner.ModelThrottled",
            FunctionError::PlannerUnavailable(_) => "Planner.ModelUnavailable",
            FunctionError::StoreUnavailable(_) => "Store.Unavailable",
            FunctionError::StoreConflict(_) => "Store.Conflict",
            FunctionError::EventsUnavailable(_) => "Events.Unavailable",
            FunctionError::RunNotFound(_) => "Run.NotFound",
            FunctionError::InvalidRequest(_) => "Request.Invalid",
            FunctionError::TriggerUnavailable(_) => "Trigger.Unavailable",
        }
    }

    /// A transient failure of a specialist's attempt.
    pub fn of_step(e: Transient) -> Self {
        match e {
            Transient::Throttled(m) => FunctionError::SpecialistThrottled(m),
            Transient::Unavailable(m) => FunctionError::SpecialistUnavailable(m),
            Transient::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for FunctionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => FunctionError::RunNotFound(id),
            StoreError::Conflict(m) => FunctionError::StoreConflict(m),
            // Step Functions owns its runs; a lease on one is a local process's mistake.
            StoreError::LeaseLost(id) => {
                FunctionError::StoreConflict(format!("run {id} is leased by another driver"))
            }
            // Corrupt data will not mend itself, but the table might be mid-write: one more try.
            StoreError::Corrupt(m) | StoreError::Unavailable(m) => {
                FunctionError::StoreUnavailable(m)
            }
        }
    }
}

impl From<RunError> for FunctionError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Store(s) => s.into(),
            RunError::NotFound(id) => FunctionError::RunNotFound(id),
            other => FunctionError::InvalidRequest(other.to_string()),
        }
    }
}

impl From<FunctionError> for lambda_runtime::Diagnostic {
    fn from(e: FunctionError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_model_is_raised_under_the_name_the_asl_retries() {
        let e = FunctionError::of_step(Transient::Throttled("429".into()));
        let d: lambda_runtime::Diagnostic = e.into();
        assert_eq!(d.error_type, "Specialist.ModelThrottled");
    }

    #[test]
    fn store_errors_keep_their_meaning() {
        assert_eq!(
            FunctionError::from(StoreError::Unavailable("x".into())).error_type(),
            "Store.Unavailable"
        );
        assert_eq!(
            FunctionError::from(StoreError::NotFound("r".into())).error_type(),
            "Run.NotFound"
        );
    }
}
