//! RFC 9457 problem details (`application/problem+json`): the one error shape
//! of the REST API, and the one `recover` that turns every rejection into it.
//! This is the only place where errors become HTTP statuses.
use std::convert::Infallible;

use http::StatusCode;
use http::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde::{Deserialize, Serialize};
use warp::Reply;
use warp::reject::Rejection;

use crate::store::StoreError;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One problem, serialised as the response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:steward:problem:<slug>`).
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For invalid input: the query parameter, path segment or header at fault.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl warp::reject::Reject for Problem {}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("urn:steward:problem:{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    /// 400: the named parameter is invalid.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid parameter",
            detail,
        );
        p.field = Some(field.to_string());
        p
    }

    /// 422: the request is well-formed but cannot be processed as it is
    /// (e.g. a policy too complex to verify); names the field.
    pub fn unprocessable(field: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "Unprocessable request",
            detail,
        );
        p.field = Some(field.to_string());
        p
    }

    /// 401: no usable bearer token. Deliberately never says why.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required: Authorization: Bearer stw_...",
        )
    }

    /// 403: the token is valid but may not do this (the detail says which
    /// permission is missing, never anything about hosts it cannot see).
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 429: the token's rate limit is used up (`Retry-After` is added by [`recover`]).
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("this token's request rate limit is used up; retry in {retry_after_secs}s"),
        )
    }

    /// 404 for a resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409: the request names more than one resource.
    pub fn conflict(field: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::CONFLICT, "ambiguous", "Ambiguous reference", detail);
        p.field = Some(field.to_string());
        p
    }

    /// 500 with a generic detail; the cause is logged, never sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the control plane could not complete the request; details are in its log",
        )
    }

    /// 503: a dependency (the database) is not available.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// Logs a storage error and returns the generic 500 problem.
    pub fn from_store(error: StoreError) -> Self {
        tracing::error!(%error, "storage error while serving a request");
        Self::internal()
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The HTTP response: problem+json body, plus `WWW-Authenticate` on 401
    /// and `Allow` on 405.
    pub fn into_response(self) -> warp::reply::Response {
        let status = self.status_code();
        let body = serde_json::to_string(&self).unwrap_or_else(|_| "{}".to_string());
        let mut builder = http::Response::builder()
            .status(status)
            .header(CONTENT_TYPE, PROBLEM_CONTENT_TYPE);
        if status == StatusCode::UNAUTHORIZED {
            builder = builder.header(WWW_AUTHENTICATE, "Bearer realm=\"steward\"");
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            builder = builder.header(ALLOW, "GET");
        }
        match builder.body(body) {
            Ok(resp) => resp.into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

/// Turns any rejection into a problem response. Never fails.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let problem = if let Some(p) = rejection.find::<Problem>() {
        p.clone()
    } else if let Some(limited) = rejection.find::<super::rbac::RateLimited>() {
        let mut resp = Problem::too_many_requests(limited.retry_after_secs).into_response();
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(limited.retry_after_secs),
        );
        return Ok(resp);
    } else if rejection.is_not_found() {
        Problem::not_found("no such route; the API lives under /api/v1")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not accept that HTTP method",
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        Problem::invalid("query", "the query string could not be decoded")
    } else if let Some(h) = rejection.find::<warp::reject::InvalidHeader>() {
        Problem::invalid(h.name(), format!("header {} is invalid", h.name()))
    } else if let Some(h) = rejection.find::<warp::reject::MissingHeader>() {
        Problem::invalid(h.name(), format!("header {} is required", h.name()))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            "the request body is too large",
        )
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the request body must be application/json",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        Problem::new(
            StatusCode::LENGTH_REQUIRED,
            "length-required",
            "Length required",
            "a Content-Length header is required",
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        Problem::internal()
    };
    Ok(problem.into_response())
}
