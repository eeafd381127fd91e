//! Extractors whose rejections are [`ApiError`]s: axum's own answer with `text/plain`, and every
//! error of this API is the JSON error naming the field at fault.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The path parameters, as `Path<T>` reads them.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(e) => Err(path_error(e)),
        }
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        // The route has no parameters for the type: a bug, not the request.
        return ApiError::Internal(rejection.body_text());
    };
    match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => ApiError::Invalid {
            field: key.clone(),
            message: "is not UTF-8 once percent-decoded".into(),
        },
        ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => {
            ApiError::Invalid {
                field: key.clone(),
                message: e.body_text(),
            }
        }
        _ => ApiError::Invalid {
            field: "path".into(),
            message: e.body_text(),
        },
    }
}

/// The query string's parameters, untyped: a route reads those it knows with [`Self::one`],
/// which names a parameter that is given twice; the others are ignored.
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // A list of pairs takes any query string (bad percent-encoding reads as U+FFFD).
        match Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
            Ok(Query(pairs)) => Ok(QueryParams(pairs)),
            Err(e) => Err(ApiError::Invalid {
                field: "query".into(),
                message: e.body_text(),
            }),
        }
    }
}

impl QueryParams {
    /// The value of `name`, if given; given more than once, it is refused.
    pub fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::Invalid {
                field: name.to_owned(),
                message: "is given more than once; send it once".into(),
            });
        }
        Ok(first)
    }
}
