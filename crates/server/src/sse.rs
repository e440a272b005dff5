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

    /// Resolves when there may be new events. A source that cannot tell is asked again
    /// every [`POLL`] anyway, so this only makes new events arrive sooner.
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// How often a source is asked for new events at the latest.
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
            let waited = std::time::Instant::now();
            let _ = tokio::time::timeout(POLL, source.changed()).await;
            idle += waited.elapsed();
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

    /// Hands out what the test queued, and says when it queued something.
    struct Told {
        queued: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
        changes: tokio::sync::watch::Receiver<u64>,
    }

    impl Source for Told {
        async fn next(&mut self) -> Option<Vec<Event>> {
            Some(std::mem::take(&mut *self.queued.lock().unwrap()))
        }

        async fn changed(&mut self) {
            let _ = self.changes.changed().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_says_it_changed_is_read_at_once_not_at_the_next_poll() {
        let queued = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tell, changes) = tokio::sync::watch::channel(0u64);
        let mut body = stream(Told {
            queued: queued.clone(),
            changes,
        })
        .into_body();
        let opened = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&opened[..], b": shg events\n\n");
        // The clock is paused: it moves only when every task waits for a timer, so a
        // stream that slept until its next poll would show POLL gone by.
        let asked = tokio::time::Instant::now();
        queued.lock().unwrap().push(Event {
            id: 7,
            kind: "exited".into(),
            data: "{}".into(),
        });
        tell.send_modify(|n| *n += 1);
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"id: 7\nevent: exited\ndata: {}\n\n");
        assert!(
            asked.elapsed() < POLL,
            "the event waited {:?} for the next poll",
            asked.elapsed()
        );
    }
}
