//! What the origin's and the gateway's HTTP sides share: `Range` requests (RFC 9110, one
//! range per request, as players and web seeds send them).

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// A `Range` that cannot be served from the body (answered with 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The byte range a request asks of a body of `len` bytes: `Ok(None)` for all of it,
/// `Err` for a range that cannot be served (answered with 416).
pub fn requested_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| Unsatisfiable)?;
    let spec = text.trim().strip_prefix("bytes=").ok_or(Unsatisfiable)?;
    if spec.contains(',') {
        // Several ranges: serve the whole body, which RFC 9110 allows.
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 {
                return Err(Unsatisfiable);
            }
            (
                len.saturating_sub(n),
                len.checked_sub(1).ok_or(Unsatisfiable)?,
            )
        }
        (a, "") => (
            a.parse().map_err(|_| Unsatisfiable)?,
            len.checked_sub(1).ok_or(Unsatisfiable)?,
        ),
        (a, b) => {
            let (a, b): (u64, u64) = (
                a.parse().map_err(|_| Unsatisfiable)?,
                b.parse().map_err(|_| Unsatisfiable)?,
            );
            (a, b.min(len.saturating_sub(1)))
        }
    };
    if start >= len || start > end {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// The answer to a range that cannot be served.
pub fn unsatisfiable(len: u64) -> Response {
    (
        StatusCode::RANGE_NOT_SATISFIABLE,
        [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        format!("the range asked for is outside the title's {len} bytes"),
    )
        .into_response()
}

/// Status and headers of an answer of `range` (or all) of `len` bytes of `content_type`.
pub fn head(range: Option<(u64, u64)>, len: u64, content_type: &str) -> (StatusCode, HeaderMap) {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT_RANGES,
        "bytes".parse().expect("a header value"),
    );
    h.insert(
        header::CONTENT_TYPE,
        content_type
            .parse()
            .unwrap_or_else(|_| "application/octet-stream".parse().expect("a header value")),
    );
    let (status, body_len) = match range {
        Some((start, end)) => {
            h.insert(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{len}")
                    .parse()
                    .expect("a header value"),
            );
            (StatusCode::PARTIAL_CONTENT, end - start + 1)
        }
        None => (StatusCode::OK, len),
    };
    h.insert(header::CONTENT_LENGTH, body_len.into());
    (status, h)
}

/// The media type of a title, from its name.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("mp4") | Some("m4v") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mkv") => "video/x-matroska",
        Some("ts") => "video/mp2t",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        requested_range(&h, len)
    }

    #[test]
    fn ranges_are_read_as_players_and_web_seeds_send_them() {
        assert_eq!(range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(range("bytes=990-2000", 1000), Ok(Some((990, 999))));
        assert_eq!(range("bytes=0-1,5-6", 1000), Ok(None));
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "items=0-1",
            "bytes=-0",
            "bytes=a-b",
        ] {
            assert_eq!(range(bad, 1000), Err(Unsatisfiable), "{bad}");
        }
        assert_eq!(requested_range(&HeaderMap::new(), 10), Ok(None));
    }
}
