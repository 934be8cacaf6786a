//! Request ids: the client's `x-request-id` is kept (when it is 1 to 128 visible ASCII
//! characters), else one is generated; the id goes upstream with every attempt, comes back in
//! the response's `x-request-id`, and is written in the access log. The request runs in a
//! `tracing` span `request` that carries the id, its method and path, so every event logged
//! while it is served (by the router, the dispatcher or their HTTP stacks) names its request.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The id of the request being served (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

const HEADER: &str = "x-request-id";

/// Middleware: gives the request its id and returns it in the response.
pub(crate) async fn assign(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| acceptable(v))
        .map_or_else(generate, str::to_string);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// A client's id is kept when it is short and visible ASCII (it goes into headers and logs).
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `req_` and 128 random bits in hex.
fn generate() -> String {
    format!("req_{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_plain_ids_and_generates_the_rest() {
        assert!(acceptable("abc-123_X"));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable(&"x".repeat(129)));
        let id = generate();
        assert!(
            id.starts_with("req_") && id.len() == 36 && acceptable(&id),
            "{id}"
        );
        assert_ne!(generate(), id);
    }
}
