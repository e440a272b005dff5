//! Server-Sent Events: a journal followed live, as `id:`/`event:`/`data:` frames, with a
//! comment at once (so the client sees the stream open), a keep-alive comment every 15 quiet
//! seconds, and an end as soon as the client leaves or its source says to stop.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Where a reconnecting client resumes (`Last-Event-ID`).
    pub id: i64,
    /// The event's type (`event:`), what `EventSource.addEventListener` listens for.
    pub kind: String,
    /// One line of JSON.
    pub data: String,
}

impl Event {
    fn frame(&self) -> Bytes {
        Bytes::from(format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.id, self.kind, self.data
        ))
    }
}

/// Where a stream's events come from.
pub trait Source: Send + 'static {
    /// The events since the last call; None ends the stream (the caller's credential was
    /// revoked, say).
    fn next(&mut self) -> impl Future<Output = Option<Vec<Event>>> + Send;
}

/// How often a source is asked for new events.
const POLL: Duration = Duration::from_millis(250);
/// A quiet stream sends a comment this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A `text/event-stream` response fed by `source` until the client leaves.
pub fn stream(mut source: impl Source) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        if tx
            .send(Ok(Bytes::from_static(b": shg events\n\n")))
            .await
            .is_err()
        {
            return;
        }
        let mut idle = Duration::ZERO;
        loop {
            let Some(events) = source.next().await else {
                return;
            };
            for e in events {
                if tx.send(Ok(e.frame())).await.is_err() {
                    return;
                }
                idle = Duration::ZERO;
            }
            tokio::time::sleep(POLL).await;
            idle += POLL;
            // Keeps proxies from closing a quiet stream, and finds out when the client left.
            if idle >= KEEP_ALIVE {
                idle = Duration::ZERO;
                if tx
                    .send(Ok(Bytes::from_static(b": keep-alive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Whether the request asks for an event stream (`Accept: text/event-stream`).
pub fn wanted(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Where a reconnecting `EventSource` says it stopped (`Last-Event-ID`).
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Two(Vec<Vec<Event>>);

    impl Source for Two {
        async fn next(&mut self) -> Option<Vec<Event>> {
            self.0.pop()
        }
    }

    #[tokio::test]
    async fn events_are_framed_in_order_and_the_stream_ends_with_its_source() {
        let e = |id: i64| Event {
            id,
            kind: "started".into(),
            data: format!("{{\"id\":{id}}}"),
        };
        let response = stream(Two(vec![vec![e(3)], vec![e(1), e(2)]]));
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            ": shg events\n\n\
             id: 1\nevent: started\ndata: {\"id\":1}\n\n\
             id: 2\nevent: started\ndata: {\"id\":2}\n\n\
             id: 3\nevent: started\ndata: {\"id\":3}\n\n"
        );
    }
}
