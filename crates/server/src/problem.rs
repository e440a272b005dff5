//! Errors on their way to a client: a status, a stable code and a sentence, always as JSON
//! (`api::ErrorBody`), whoever made them (a handler, the authentication, axum itself).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error as the client receives it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable, for scripts: `not-found`, `forbidden`, `admission-refused`, …
    pub code: &'static str,
    /// For the person: the object, the rule and the way out.
    pub message: String,
    /// Structured detail where there is some (an admission refusal, say).
    pub detail: Option<serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn rate_limited(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", message)
    }

    /// A failure the client cannot act on: the detail goes to the server's log, the client
    /// learns only that something went wrong on `server` (`the gateway agent`, say).
    pub fn internal(server: &str, detail: impl std::fmt::Display) -> Problem {
        tracing::error!("internal error: {detail}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error in {server}; its log has the details"),
        )
    }

    pub fn with_detail(mut self, detail: Option<serde_json::Value>) -> Problem {
        self.detail = detail;
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = api::ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            detail: self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

/// The answer for a path no route serves.
pub async fn no_such_path() -> Response {
    Problem::not_found("no such API path; `GET /openapi.json` lists them").into_response()
}

/// Rejections made by axum itself (a query or path that does not parse, a wrong method, a
/// body too large) come as plain text; every error of these APIs is an [`api::ErrorBody`].
/// Use as `.layer(axum::middleware::map_response(server::json_errors))`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    // axum says 422 for a body of the right syntax and the wrong shape: a bad request here.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            "this path does not take that method; `GET /openapi.json` lists what each takes".into()
        }
        (_, true) => status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_string(),
        (_, false) => text,
    };
    Problem::new(status, code, message).into_response()
}

/// The route serving an API's OpenAPI document (kept in the repository beside its code).
pub fn openapi_route<S: Clone + Send + Sync + 'static>(doc: &'static str) -> axum::Router<S> {
    axum::Router::new().route(
        "/openapi.json",
        axum::routing::get(
            move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) },
        ),
    )
}
