//! Errors as the API answers them: a status and `{"error": {"code", "message", "field"?}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: malformed_json, invalid_request, unauthorized, forbidden,
    /// not_found, method_not_allowed, conflict, payload_too_large, overloaded, internal.
    pub code: String,
    pub message: String,
    /// The request field (JSON path) or header at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Malformed {
        field: Option<String>,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("missing bearer token: send Authorization: Bearer <API_KEY>")]
    Unauthorized,
    #[error("the bearer token is not valid")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("too many runs started with this key; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    /// What this deployment does not serve (it names where it is served).
    #[error("{0}")]
    NotImplemented(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed { .. } => "malformed_json",
            ApiError::Invalid { .. } => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let field = match self {
            ApiError::Malformed { field, .. } => field.clone(),
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let message = match self {
            ApiError::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
                field,
            },
        }
    }
}

impl From<orchestrator_core::types::ValidationError> for ApiError {
    fn from(e: orchestrator_core::types::ValidationError) -> Self {
        ApiError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<orchestrator_core::ports::StoreError> for ApiError {
    fn from(e: orchestrator_core::ports::StoreError) -> Self {
        match e {
            orchestrator_core::ports::StoreError::NotFound(id) => {
                ApiError::NotFound(format!("run {id} not found"))
            }
            orchestrator_core::ports::StoreError::Unavailable(m) => ApiError::Overloaded {
                message: format!("the store is unavailable: {m}"),
                retry_after_secs: 1,
            },
            orchestrator_core::ports::StoreError::LeaseLost(id) => ApiError::Conflict(format!(
                "run {id} was taken over by another process while this one wrote it; retry"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::Overloaded {
            retry_after_secs, ..
        }
        | ApiError::RateLimited { retry_after_secs } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
