//! Calls the fleet's parties make beyond the gateway API: JSON in and out on any path, a
//! package file up or down, and the long-poll of a desired state (`If-None-Match`, 304).

use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::client::{
    bad_response, collect, describe, error_answer, http_error, snippet, ReqBody, Sender,
};
use crate::{Client, ClientError};

fn method_of(method: &str, uri: &str) -> Result<Method, ClientError> {
    Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::BadRequest {
        request: format!("{method} {uri}"),
        reason: e.to_string(),
    })
}

impl Client {
    /// `GET uri`, answered with JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ClientError> {
        self.json(Method::GET, uri.to_string(), ReqBody::empty(), None)
            .await
    }

    /// `METHOD uri` with a JSON body, answered with JSON.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        uri: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::BadRequest {
            request: format!("{method} {uri}"),
            reason: e.to_string(),
        })?;
        self.json(
            method_of(method, uri)?,
            uri.to_string(),
            ReqBody::bytes(bytes),
            Some("application/json"),
        )
        .await
    }

    /// `METHOD uri` with a JSON body, whose answer has no body to read (204).
    pub async fn send_json_empty<B: Serialize>(
        &self,
        method: &str,
        uri: &str,
        body: &B,
    ) -> Result<(), ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::BadRequest {
            request: format!("{method} {uri}"),
            reason: e.to_string(),
        })?;
        let method = method_of(method, uri)?;
        let request = describe(&method, uri);
        let response = self
            .call(
                method,
                uri.to_string(),
                ReqBody::bytes(bytes),
                Some("application/json"),
            )
            .await?;
        collect(&request, response.into_body()).await?;
        Ok(())
    }

    /// `METHOD uri` whose answer has no body to read (204).
    pub async fn send_empty(&self, method: &str, uri: &str) -> Result<(), ClientError> {
        let method = method_of(method, uri)?;
        let request = describe(&method, uri);
        let response = self
            .call(method, uri.to_string(), ReqBody::empty(), None)
            .await?;
        collect(&request, response.into_body()).await?;
        Ok(())
    }

    /// `POST uri` with the file at `path` as the body, answered with JSON.
    pub async fn post_file<T: DeserializeOwned>(
        &self,
        uri: &str,
        path: &Path,
    ) -> Result<T, ClientError> {
        let package_error = |error| ClientError::Package {
            path: path.to_path_buf(),
            error,
        };
        let file = tokio::fs::File::open(path).await.map_err(package_error)?;
        let meta = file.metadata().await.map_err(package_error)?;
        let body = ReqBody::File {
            file,
            remaining: meta.len(),
            buf: vec![0; crate::client::UPLOAD_CHUNK].into_boxed_slice(),
        };
        self.json(
            Method::POST,
            uri.to_string(),
            body,
            Some("application/octet-stream"),
        )
        .await
    }

    /// `GET uri` into the file `dest` (written whole or not at all); returns its size.
    pub async fn download(&self, uri: &str, dest: &Path) -> Result<u64, ClientError> {
        let request = describe(&Method::GET, uri);
        let response = self
            .call(Method::GET, uri.to_string(), ReqBody::empty(), None)
            .await?;
        let part = dest.with_extension("part");
        let io = |error| ClientError::Package {
            path: part.clone(),
            error,
        };
        let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http_error(&request, &e))?;
            if let Some(data) = frame.data_ref() {
                total += data.len() as u64;
                file.write_all(data).await.map_err(io)?;
            }
        }
        file.flush().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&part, dest).await.map_err(io)?;
        Ok(total)
    }

    /// `GET uri` with `If-None-Match: etag`: the new ETag and JSON, or None when the server
    /// says 304 (nothing changed while it held the request).
    ///
    /// The connection is kept for the next poll (a gateway polls in a loop, and a handshake
    /// per poll would be most of the controller's work); one that the server closed meanwhile
    /// is replaced by a new one, once.
    pub async fn poll_json<T: DeserializeOwned>(
        &self,
        uri: &str,
        etag: Option<&str>,
    ) -> Result<Option<(String, T)>, ClientError> {
        let kept = self
            .poll_conn
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut sender) = kept {
            let ready = tokio::time::timeout(Duration::from_secs(1), sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                match self.poll_on(sender, uri, etag).await {
                    Err(ClientError::Http { .. }) => {} // closed under us: once more, anew
                    done => return done,
                }
            }
        }
        let request = describe(&Method::GET, uri);
        let stream = self.connect().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_error(&request, &e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.poll_on(sender, uri, etag).await
    }

    async fn poll_on<T: DeserializeOwned>(
        &self,
        mut sender: Sender,
        uri: &str,
        etag: Option<&str>,
    ) -> Result<Option<(String, T)>, ClientError> {
        let request = describe(&Method::GET, uri);
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(HOST, self.host());
        if let Some(token) = self.token() {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(etag) = etag {
            builder = builder.header(IF_NONE_MATCH, etag);
        }
        let req = builder
            .header(CONTENT_LENGTH, 0)
            .body(ReqBody::empty())
            .map_err(|e| ClientError::BadRequest {
                request: request.clone(),
                reason: e.to_string(),
            })?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| http_error(&request, &e))?;
        let status = response.status();
        let tag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bytes = collect(&request, response.into_body()).await?;
        // The whole answer is read: the connection may carry the next poll.
        *self.poll_conn.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        if status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if status.is_success() && json {
            let value = serde_json::from_slice(&bytes).map_err(|e| {
                bad_response(&request, format!("{e}; the body was: {}", snippet(&bytes)))
            })?;
            return Ok(Some((tag, value)));
        }
        Err(error_answer(&request, status, &bytes))
    }
}
