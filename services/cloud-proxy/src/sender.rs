//! The gateway's background sender: each complete upload goes on to the cloud (a tus server
//! on the WAN side) in chunks, resuming from the offset the cloud gives whenever the link was
//! cut or the service restarted. What the cloud acknowledged is saved after each chunk.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::tus::{Meta, Store, VERSION};

/// Bytes per PATCH to the cloud.
const CHUNK: usize = 256 << 10;

/// The cloud's tus endpoint: `http://HOST:PORT/PATH/`.
#[derive(Debug, Clone)]
pub struct Cloud {
    host: String,
    port: u16,
    path: String,
}

impl Cloud {
    pub fn parse(url: &str) -> Result<Cloud, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("`{p}` is not a port"))?,
            ),
            None => (authority.to_string(), 80),
        };
        Ok(Cloud {
            host,
            port,
            path: format!("/{path}"),
        })
    }

    /// One request; the status and the headers of the answer.
    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(u16, hyper::HeaderMap), String> {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "the cloud did not answer within 10 s".to_string())?
            .map_err(|e| format!("cannot reach the cloud: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", format!("{}:{}", self.host, self.port))
            .header("Tus-Resumable", VERSION);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
            .await
            .map_err(|_| "the cloud stopped answering".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = answer.into_parts();
        let _ = body.collect().await;
        Ok((parts.status.as_u16(), parts.headers))
    }
}

/// Sends every complete upload on, forever; wakes when one completes, and every few seconds
/// to retry after a failure.
pub async fn run(store: Arc<Store>, cloud: Cloud) {
    loop {
        for meta in store.all() {
            if store.offset(&meta.id) == meta.length && meta.sent < meta.length {
                if let Err(e) = send(&store, &cloud, meta.clone()).await {
                    eprintln!(
                        "cloud-proxy: upload {} paused at the cloud: {e}; retrying",
                        meta.id
                    );
                }
            }
        }
        tokio::select! {
            () = store.complete.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn send(store: &Store, cloud: &Cloud, mut meta: Meta) -> Result<(), String> {
    let location = match &meta.cloud {
        Some(location) => location.clone(),
        None => {
            let mut headers = vec![("Upload-Length", meta.length.to_string())];
            if !meta.metadata.is_empty() {
                headers.push(("Upload-Metadata", meta.metadata.clone()));
            }
            let (status, answer) = cloud
                .call("POST", &cloud.path, &headers, Bytes::new())
                .await?;
            let location = answer
                .get("Location")
                .and_then(|v| v.to_str().ok())
                .filter(|_| status == 201)
                .ok_or_else(|| format!("the cloud refused the upload (HTTP {status})"))?
                .to_string();
            meta.cloud = Some(location.clone());
            store.save(&meta).await.map_err(|e| e.to_string())?;
            location
        }
    };
    let path = location
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| r[i..].to_string()))
        .unwrap_or(location);
    let (status, answer) = cloud.call("HEAD", &path, &[], Bytes::new()).await?;
    if status == 404 {
        // The cloud lost it: start over there.
        meta.cloud = None;
        meta.sent = 0;
        store.save(&meta).await.map_err(|e| e.to_string())?;
        return Err("the cloud no longer has the upload; starting it again".into());
    }
    let mut offset: u64 = answer
        .get("Upload-Offset")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or_else(|| format!("the cloud gave no offset (HTTP {status})"))?;
    let mut file = tokio::fs::File::open(store.data(&meta.id))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    while offset < meta.length {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| e.to_string())?;
        let want = CHUNK.min((meta.length - offset) as usize);
        file.read_exact(&mut buf[..want])
            .await
            .map_err(|e| e.to_string())?;
        let headers = [
            ("Upload-Offset", offset.to_string()),
            (
                "Content-Type",
                "application/offset+octet-stream".to_string(),
            ),
        ];
        let (status, answer) = cloud
            .call(
                "PATCH",
                &path,
                &headers,
                Bytes::copy_from_slice(&buf[..want]),
            )
            .await?;
        offset = answer
            .get("Upload-Offset")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .filter(|_| status == 204)
            .ok_or_else(|| format!("the cloud refused a chunk at {offset} (HTTP {status})"))?;
        meta.sent = offset;
        store.save(&meta).await.map_err(|e| e.to_string())?;
    }
    eprintln!(
        "cloud-proxy: upload {} is in the cloud ({} bytes)",
        meta.id, meta.length
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls_parse() {
        let c = Cloud::parse("http://203.0.113.2:8080/files/").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("203.0.113.2", 8080, "/files/")
        );
        assert!(Cloud::parse("https://x/").is_err());
    }
}
