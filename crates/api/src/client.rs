//! A client of the gateway API: HTTP/1.1 to the agent over its Unix socket, or over TCP with TLS
//! (`https://HOST:PORT`) with a bearer token; one connection per call.
//!
//! Every call opens a fresh connection, so a long `logs --follow` or `exec` never holds up
//! another call, and a client that hangs up simply closes its socket. Bodies that can be large
//! or endless (package uploads, logs, exec output) are streamed, never collected.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::UnixStream;

use crate::exec_frames::{self, Decoder};
use crate::types::{
    ErrorBody, Event, ExecRequest, GatewayInfo, LogEntry, ServiceDetail, ServiceSummary,
};

/// How many bytes of a package file are read and sent at a time.
pub(crate) const UPLOAD_CHUNK: usize = 64 * 1024;

/// Everything that can go wrong talking to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The target is neither a socket path nor an `https://HOST:PORT` URL.
    #[error("cannot use the gateway at {target}: {reason}")]
    BadTarget { target: String, reason: String },

    /// The TLS settings could not be made (an unreadable CA certificate, say).
    #[error("cannot talk TLS to {target}: {reason}")]
    Tls { target: String, reason: String },

    /// The target is empty.
    #[error(
        "no gateway given: set --gateway or SHG_GATEWAY to the agent's API socket or https://HOST:PORT"
    )]
    NoTarget,

    /// Nothing listens there (or it cannot be opened, or the TLS handshake failed).
    #[error(
        "cannot reach the gateway at {target}: {error}; is `shg gateway run` running? \
         set --gateway or SHG_GATEWAY"
    )]
    Connect { target: String, error: io::Error },

    /// The agent answered with an error status; `message` is meant for the user.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        /// Stable machine-readable code such as `not-found` or `conflict`.
        code: String,
        message: String,
        /// Machine-readable detail (the refusal, for `admission-refused`).
        detail: Option<serde_json::Value>,
    },

    /// The agent answered something this client does not understand.
    #[error("bad response from the gateway to {request}: {reason}")]
    BadResponse { request: String, reason: String },

    /// The connection failed or broke in the middle of a call.
    #[error("connection to the gateway broke during {request}: {reason}")]
    Http { request: String, reason: String },

    /// The request could not be built (an argument no URL can carry).
    #[error("cannot send {request}: {reason}")]
    BadRequest { request: String, reason: String },

    /// The package file to install cannot be read.
    #[error("cannot read package {}: {error}", path.display())]
    Package { path: PathBuf, error: io::Error },

    /// A streaming callback failed to write what it received (for example a closed pipe);
    /// the stream was stopped.
    #[error("cannot write the output: {error}")]
    Output { error: io::Error },
}

impl ClientError {
    /// The services an admission refusal proposes to stop, when stopping (not removing)
    /// them would make room.
    pub fn proposal_to_stop(&self) -> Option<Vec<String>> {
        let ClientError::Api {
            code,
            detail: Some(detail),
            ..
        } = self
        else {
            return None;
        };
        if code != "admission-refused" || detail["way_out"] != "stop" {
            return None;
        }
        let names: Vec<String> = detail["proposal"]
            .as_array()?
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect();
        (!names.is_empty()).then_some(names)
    }

    /// The HTTP status of an error answer from the agent.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What a streaming callback returns: `()` to keep reading, or an `io::Result` whose error
/// stops the stream (a closed pipe, say) and comes back as [`ClientError::Output`].
pub trait Flow {
    fn into_result(self) -> io::Result<()>;
}

impl Flow for () {
    fn into_result(self) -> io::Result<()> {
        Ok(())
    }
}

impl Flow for io::Result<()> {
    fn into_result(self) -> io::Result<()> {
        self
    }
}

/// A handle on one gateway agent. Cheap to clone; it holds no connection, but for the one a
/// long-poll ended on (see [`Client::poll_json`]), which its clones share.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    token: Option<String>,
    pub(crate) poll_conn: PollConn,
}

/// A connection's sending half, ready for its next request.
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// The connection the last long-poll ended on, kept for the next one.
#[derive(Clone, Default)]
pub(crate) struct PollConn(pub(crate) std::sync::Arc<std::sync::Mutex<Option<Sender>>>);

impl std::fmt::Debug for PollConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PollConn")
    }
}

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Https {
        /// `host:port`, as given.
        authority: String,
        /// The name the certificate must carry.
        server_name: rustls::pki_types::ServerName<'static>,
        tls: std::sync::Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Https { authority, .. } => write!(f, "https://{authority}"),
        }
    }
}

/// How to reach a remote gateway: the token, and the certificate to trust.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Sent as `Authorization: Bearer`; never put in a URL.
    pub token: Option<String>,
    /// PEM certificate(s) to trust for `https://` targets (the gateway's self-made one is
    /// `STATE_DIR/tls/cert.pem`); without it, the system's trusted roots.
    pub ca_cert: Option<PathBuf>,
    /// A PEM client certificate and its key, presented instead of a token (the operator
    /// registered it with `shg token create --cert`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Trust a server whose chain carries a CA with this SHA-256 (hex), and only that: how a
    /// gateway enrolling with a controller it has never met recognises it (the fingerprint
    /// comes in the enrollment token). Overrides `ca_cert`.
    pub pinned_ca_sha256: Option<String>,
}

/// Anything a connection can run over.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    /// A client of the agent at `target`: the path of its Unix socket, or `https://HOST:PORT`.
    /// Nothing is connected yet: an absent agent shows up as [`ClientError::Connect`] on the
    /// first call.
    pub fn new(target: &str) -> Result<Client, ClientError> {
        Client::with_options(target, &Options::default())
    }

    pub fn with_options(target: &str, options: &Options) -> Result<Client, ClientError> {
        if target.is_empty() {
            return Err(ClientError::NoTarget);
        }
        let bad = |reason: &str| ClientError::BadTarget {
            target: target.to_string(),
            reason: reason.to_string(),
        };
        let lower = target.to_ascii_lowercase();
        let target = if lower.starts_with("http://") {
            return Err(bad(
                "plain HTTP would send the token in the clear; use https://HOST:PORT",
            ));
        } else if lower.starts_with("https://") {
            let authority = target["https://".len()..].trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(bad("give it as https://HOST:PORT, without a path"));
            }
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => host,
                _ => return Err(bad("give the port: https://HOST:PORT")),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| bad("the host is not a name or an IP address"))?;
            Target::Https {
                authority: authority.to_string(),
                server_name,
                tls: tls_config(target, options)?,
            }
        } else {
            Target::Unix(PathBuf::from(target))
        };
        Ok(Client {
            target,
            token: options.token.clone().filter(|t| !t.is_empty()),
            poll_conn: PollConn::default(),
        })
    }

    /// The `Host` header for this target.
    pub(crate) fn host(&self) -> String {
        match &self.target {
            Target::Unix(_) => "localhost".to_string(),
            Target::Https { authority, .. } => authority.clone(),
        }
    }

    /// The bearer token, if any.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Where this client connects, for messages.
    pub fn target(&self) -> String {
        format!("{:?}", self.target)
    }

    pub(crate) async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let failed = |error| ClientError::Connect {
            target: self.target(),
            error,
        };
        match &self.target {
            Target::Unix(path) => Ok(Box::new(UnixStream::connect(path).await.map_err(failed)?)),
            Target::Https {
                authority,
                server_name,
                tls,
            } => {
                let tcp = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(failed)?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(failed)?;
                Ok(Box::new(stream))
            }
        }
    }

    /// `GET /v1/services`: every installed service.
    pub async fn list(&self) -> Result<Vec<ServiceSummary>, ClientError> {
        self.json(Method::GET, "/v1/services".into(), ReqBody::empty(), None)
            .await
    }

    /// `GET /v1/services/{name}`.
    pub async fn get(&self, name: &str) -> Result<ServiceDetail, ClientError> {
        let uri = format!("/v1/services/{}", segment(name));
        self.json(Method::GET, uri, ReqBody::empty(), None).await
    }

    /// `POST /v1/services`: uploads the package file at `path`, streamed from disk.
    pub async fn install(&self, path: &Path, start: bool) -> Result<ServiceDetail, ClientError> {
        let uri = if start {
            "/v1/services"
        } else {
            "/v1/services?start=false"
        };
        self.upload(path, uri, None).await
    }

    /// `POST /v1/services` with every install option.
    pub async fn install_with(
        &self,
        path: &Path,
        params: &InstallParams,
    ) -> Result<ServiceDetail, ClientError> {
        let uri = format!("/v1/services{}", params.query(false).0);
        self.upload(path, &uri, params.manifest.as_deref()).await
    }

    /// `POST /v1/services?dry_run=true` with every install option.
    pub async fn check_install_with(
        &self,
        path: &Path,
        params: &InstallParams,
    ) -> Result<crate::Verdict, ClientError> {
        let uri = format!("/v1/services{}", params.query(true).0);
        self.upload(path, &uri, params.manifest.as_deref()).await
    }

    /// `POST /v1/services/{name}/update`: switches `name` to the package at `path`; the
    /// answer comes once the new release started, its health window still running.
    pub async fn update(
        &self,
        name: &str,
        path: &Path,
        params: &UpdateParams,
    ) -> Result<ServiceDetail, ClientError> {
        let mut query = Query::default();
        if params.allow_unsigned {
            query.push("allow_unsigned", "true");
        }
        if let Some(w) = params.window_s {
            query.push("window_s", &w.to_string());
        }
        if let Some(source) = &params.source {
            query.push("source", source);
        }
        let uri = format!("/v1/services/{}/update{}", segment(name), query.0);
        self.upload(path, &uri, params.manifest.as_deref()).await
    }

    /// `POST /v1/services/{name}/rollback`: back to the release the last update replaced.
    pub async fn rollback(&self, name: &str) -> Result<ServiceDetail, ClientError> {
        let uri = format!("/v1/services/{}/rollback", segment(name));
        self.json(Method::POST, uri, ReqBody::empty(), None).await
    }

    /// `POST /v1/pull`: the gateway pulls the image itself and installs it.
    pub async fn pull(&self, req: &crate::PullRequest) -> Result<ServiceDetail, ClientError> {
        let json = serde_json::to_vec(req).expect("serializes");
        self.json(
            Method::POST,
            "/v1/pull".into(),
            ReqBody::bytes(json),
            Some("application/json"),
        )
        .await
    }

    /// `GET /v1/trust` (operator): the trust policy.
    pub async fn trust_rules(&self) -> Result<Vec<crate::TrustRule>, ClientError> {
        self.json(Method::GET, "/v1/trust".into(), ReqBody::empty(), None)
            .await
    }

    /// `POST /v1/trust` (operator): trusts a provider's key.
    pub async fn add_trust(
        &self,
        req: &crate::TrustRequest,
    ) -> Result<crate::TrustRule, ClientError> {
        let json = serde_json::to_vec(req).expect("serializes");
        self.json(
            Method::POST,
            "/v1/trust".into(),
            ReqBody::bytes(json),
            Some("application/json"),
        )
        .await
    }

    /// `DELETE /v1/trust/{key_id}` (operator).
    pub async fn remove_trust(&self, key_id: &str) -> Result<(), ClientError> {
        self.delete(format!("/v1/trust/{}", segment(key_id))).await
    }

    /// `POST /v1/services?stop=A,B`: installs and starts the package after stopping the named
    /// services to make room (the household confirmed the agent's proposal).
    pub async fn install_making_room(
        &self,
        path: &Path,
        stop: &[String],
    ) -> Result<ServiceDetail, ClientError> {
        let uri = format!("/v1/services?stop={}", stop_list(stop));
        self.upload(path, &uri, None).await
    }

    /// `POST /v1/services/{name}/start?stop=A,B`.
    pub async fn start_making_room(
        &self,
        name: &str,
        stop: &[String],
    ) -> Result<ServiceSummary, ClientError> {
        let uri = format!(
            "/v1/services/{}/start?stop={}",
            segment(name),
            stop_list(stop)
        );
        self.json(Method::POST, uri, ReqBody::empty(), None).await
    }

    /// `POST /v1/services?dry_run=true`: whether the package would be admitted; changes
    /// nothing. A refusal is a [`ClientError::Api`] with code `admission-refused`.
    pub async fn check_install(&self, path: &Path) -> Result<crate::Verdict, ClientError> {
        self.upload(path, "/v1/services?dry_run=true", None).await
    }

    /// `POST /v1/services/{name}/start?dry_run=true`.
    pub async fn check_start(&self, name: &str) -> Result<crate::Verdict, ClientError> {
        let uri = format!("/v1/services/{}/start?dry_run=true", segment(name));
        self.json(Method::POST, uri, ReqBody::empty(), None).await
    }

    /// `GET /v1/gateway/capacity`.
    pub async fn capacity(&self) -> Result<crate::CapacityView, ClientError> {
        self.json(
            Method::GET,
            "/v1/gateway/capacity".to_string(),
            ReqBody::empty(),
            None,
        )
        .await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<crate::StatsView, ClientError> {
        self.json(Method::GET, "/v1/stats".to_string(), ReqBody::empty(), None)
            .await
    }

    /// POSTs the package file at `path` to `uri`, streamed from disk, with the service
    /// `manifest` given beside it (in [`crate::MANIFEST_HEADER`]) when there is one.
    async fn upload<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        uri: &str,
        manifest: Option<&str>,
    ) -> Result<T, ClientError> {
        let package_error = |error| ClientError::Package {
            path: path.to_path_buf(),
            error,
        };
        let file = tokio::fs::File::open(path).await.map_err(package_error)?;
        let meta = file.metadata().await.map_err(package_error)?;
        if !meta.is_file() {
            return Err(package_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file; give the .tar file that `shg pack` wrote",
            )));
        }
        let uri = uri.to_string();
        let body = ReqBody::File {
            file,
            remaining: meta.len(),
            buf: vec![0; UPLOAD_CHUNK].into_boxed_slice(),
        };
        let header = match manifest {
            None => None,
            Some(text) if text.len() > crate::MAX_MANIFEST => {
                return Err(ClientError::BadRequest {
                    request: describe(&Method::POST, &uri),
                    reason: format!(
                        "the service manifest is {} bytes; the gateway takes at most {} beside an image",
                        text.len(),
                        crate::MAX_MANIFEST
                    ),
                })
            }
            Some(text) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                let value = HeaderValue::from_str(&encoded).expect("base64 is a valid header value");
                Some((crate::MANIFEST_HEADER, value))
            }
        };
        let request = describe(&Method::POST, &uri);
        let response = self
            .call_with(
                Method::POST,
                uri,
                body,
                Some("application/octet-stream"),
                header,
            )
            .await?;
        let bytes = collect(&request, response.into_body()).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| bad_response(&request, format!("{e}; the body was: {}", snippet(&bytes))))
    }

    /// `POST /v1/services/{name}/start`.
    pub async fn start(&self, name: &str) -> Result<ServiceSummary, ClientError> {
        self.verb(name, "start").await
    }

    /// `POST /v1/services/{name}/stop`.
    pub async fn stop(&self, name: &str) -> Result<ServiceSummary, ClientError> {
        self.verb(name, "stop").await
    }

    /// `POST /v1/services/{name}/restart`.
    pub async fn restart(&self, name: &str) -> Result<ServiceSummary, ClientError> {
        self.verb(name, "restart").await
    }

    /// `POST /v1/services/{name}/priority`.
    /// Sets the LAN hosts the household lets `name` reach (`HOST` or `HOST:PORT`); an empty
    /// list closes the LAN to it again.
    pub async fn set_lan(
        &self,
        name: &str,
        hosts: &[String],
    ) -> Result<ServiceSummary, ClientError> {
        let uri = format!("/v1/services/{}/lan", segment(name));
        let body = crate::LanRequest {
            hosts: hosts.to_vec(),
        };
        let json = serde_json::to_vec(&body).expect("serializes");
        self.json(
            Method::POST,
            uri,
            ReqBody::Bytes(Some(json.into())),
            Some("application/json"),
        )
        .await
    }

    pub async fn set_priority(
        &self,
        name: &str,
        priority: i32,
    ) -> Result<ServiceSummary, ClientError> {
        let uri = format!("/v1/services/{}/priority", segment(name));
        let json = serde_json::to_vec(&crate::PriorityRequest { priority }).expect("serializes");
        self.json(
            Method::POST,
            uri,
            ReqBody::Bytes(Some(json.into())),
            Some("application/json"),
        )
        .await
    }

    async fn verb(&self, name: &str, verb: &str) -> Result<ServiceSummary, ClientError> {
        let uri = format!("/v1/services/{}/{verb}", segment(name));
        self.json(Method::POST, uri, ReqBody::empty(), None).await
    }

    /// `DELETE /v1/services/{name}`.
    pub async fn remove(&self, name: &str) -> Result<(), ClientError> {
        self.delete(format!("/v1/services/{}", segment(name))).await
    }

    /// A `DELETE` whose answer has no body to read (204).
    async fn delete(&self, uri: String) -> Result<(), ClientError> {
        let request = describe(&Method::DELETE, &uri);
        let response = self
            .call(Method::DELETE, uri, ReqBody::empty(), None)
            .await?;
        // Drain whatever body came with the 204 so the answer is complete.
        collect(&request, response.into_body()).await?;
        Ok(())
    }

    /// `GET /v1/services/{name}/logs`: calls `on_line` for each entry as it arrives. With
    /// `follow` this returns only when the agent ends the stream (the service was removed) or
    /// `on_line` returns an error.
    pub async fn logs<F: Flow>(
        &self,
        name: &str,
        tail: Option<usize>,
        follow: bool,
        mut on_line: impl FnMut(LogEntry) -> F,
    ) -> Result<(), ClientError> {
        let mut query = Query::default();
        if let Some(n) = tail {
            query.push("tail", &n.to_string());
        }
        if follow {
            query.push("follow", "true");
        }
        let uri = format!("/v1/services/{}/logs{}", segment(name), query.0);
        let request = describe(&Method::GET, &uri);
        let response = self.call(Method::GET, uri, ReqBody::empty(), None).await?;
        let mut body = response.into_body();
        let mut lines = LineSplitter::default();
        let mut deliver = |line: &[u8]| -> Result<(), ClientError> {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let entry: LogEntry = serde_json::from_slice(line).map_err(|e| {
                bad_response(&request, format!("a log line is not a log entry: {e}"))
            })?;
            on_line(entry)
                .into_result()
                .map_err(|error| ClientError::Output { error })
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http_error(&request, &e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            lines.feed(&data);
            while let Some(line) = lines.next_line() {
                deliver(&line)?;
            }
        }
        deliver(&lines.rest())
    }

    /// `POST /v1/services/{name}/exec`: runs `command` in the service, passes its output to
    /// the callbacks as it comes, and returns its exit code.
    pub async fn exec<A: Flow, B: Flow>(
        &self,
        name: &str,
        command: &[String],
        mut on_stdout: impl FnMut(&[u8]) -> A,
        mut on_stderr: impl FnMut(&[u8]) -> B,
    ) -> Result<i32, ClientError> {
        let uri = format!("/v1/services/{}/exec", segment(name));
        let request = describe(&Method::POST, &uri);
        let json = serde_json::to_vec(&ExecRequest {
            command: command.to_vec(),
        })
        .map_err(|e| ClientError::BadRequest {
            request: request.clone(),
            reason: e.to_string(),
        })?;
        let response = self
            .call(
                Method::POST,
                uri,
                ReqBody::Bytes(Some(json.into())),
                Some("application/json"),
            )
            .await?;
        let mut body = response.into_body();
        let mut decoder = Decoder::default();
        let output = |error| ClientError::Output { error };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http_error(&request, &e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            decoder.feed(&data);
            while let Some((tag, data)) = decoder.next_frame() {
                match tag {
                    exec_frames::STDOUT => on_stdout(&data).into_result().map_err(output)?,
                    exec_frames::STDERR => on_stderr(&data).into_result().map_err(output)?,
                    exec_frames::EXIT => {
                        let code: [u8; 4] = data.as_slice().try_into().map_err(|_| {
                            bad_response(
                                &request,
                                format!("exit frame of {} bytes, expected 4", data.len()),
                            )
                        })?;
                        return Ok(i32::from_be_bytes(code));
                    }
                    other => {
                        return Err(bad_response(
                            &request,
                            format!("unknown exec frame tag {other}"),
                        ))
                    }
                }
            }
        }
        Err(bad_response(
            &request,
            "the output ended without an exit code; the service or the agent stopped during the exec"
                .into(),
        ))
    }

    /// `GET /v1/events`: events after `since` (an event id), of one service if given.
    pub async fn events(
        &self,
        since: Option<i64>,
        service: Option<&str>,
    ) -> Result<Vec<Event>, ClientError> {
        let mut query = Query::default();
        if let Some(id) = since {
            query.push("since", &id.to_string());
        }
        if let Some(name) = service {
            query.push("service", name);
        }
        let uri = format!("/v1/events{}", query.0);
        self.json(Method::GET, uri, ReqBody::empty(), None).await
    }

    /// `GET /v1/events?follow=true`: the journal as it grows (Server-Sent Events), calling
    /// `on_event` for each new event until the stream ends or `on_event` fails.
    pub async fn follow_events<F: Flow>(
        &self,
        service: Option<&str>,
        mut on_event: impl FnMut(Event) -> F,
    ) -> Result<(), ClientError> {
        let mut query = Query::default();
        query.push("follow", "true");
        if let Some(name) = service {
            query.push("service", name);
        }
        let uri = format!("/v1/events{}", query.0);
        let request = describe(&Method::GET, &uri);
        let response = self.call(Method::GET, uri, ReqBody::empty(), None).await?;
        let mut body = response.into_body();
        let mut lines = LineSplitter::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http_error(&request, &e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            lines.feed(&data);
            while let Some(line) = lines.next_line() {
                // Only `data:` lines carry the event; ids, names and comments repeat it.
                let Some(json) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                let event: Event = serde_json::from_slice(json).map_err(|e| {
                    bad_response(&request, format!("an event is not an event: {e}"))
                })?;
                on_event(event)
                    .into_result()
                    .map_err(|error| ClientError::Output { error })?;
            }
        }
        Ok(())
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let uri = "/metrics".to_string();
        let request = describe(&Method::GET, &uri);
        let response = self.call(Method::GET, uri, ReqBody::empty(), None).await?;
        let bytes = collect(&request, response.into_body()).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /v1/services/NAME/metrics` (the service's provider): what the service's own
    /// `[metrics]` URL answered, as it answered it.
    pub async fn service_metrics(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        let uri = format!("/v1/services/{}/metrics", segment(name));
        let request = describe(&Method::GET, &uri);
        let response = self.call(Method::GET, uri, ReqBody::empty(), None).await?;
        Ok(collect(&request, response.into_body()).await?.to_vec())
    }

    /// `POST /v1/tokens` (operator): a new token, shown this once.
    pub async fn create_token(
        &self,
        req: &crate::TokenRequest,
    ) -> Result<crate::NewToken, ClientError> {
        let json = serde_json::to_vec(req).expect("serializes");
        self.json(
            Method::POST,
            "/v1/tokens".into(),
            ReqBody::bytes(json),
            Some("application/json"),
        )
        .await
    }

    /// `GET /v1/tokens` (operator).
    pub async fn tokens(&self) -> Result<Vec<crate::TokenInfo>, ClientError> {
        self.json(Method::GET, "/v1/tokens".into(), ReqBody::empty(), None)
            .await
    }

    /// `DELETE /v1/tokens/{id}` (operator).
    pub async fn revoke_token(&self, id: i64) -> Result<(), ClientError> {
        self.delete(format!("/v1/tokens/{id}")).await
    }

    /// `GET /v1/audit` (operator): every mutating call, oldest first.
    pub async fn audit(&self, since: Option<i64>) -> Result<Vec<crate::AuditEntry>, ClientError> {
        let mut query = Query::default();
        if let Some(id) = since {
            query.push("since", &id.to_string());
        }
        let uri = format!("/v1/audit{}", query.0);
        self.json(Method::GET, uri, ReqBody::empty(), None).await
    }

    /// Any call, for tests and tools: the status and the body, whatever they are.
    pub async fn raw(
        &self,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::BadRequest {
                request: format!("{method} {uri}"),
                reason: e.to_string(),
            })?;
        let request = describe(&method, uri);
        let has_body = body.is_some();
        let body = body.map(ReqBody::bytes).unwrap_or_else(ReqBody::empty);
        let content_type = has_body.then_some("application/json");
        match self.call(method, uri.to_string(), body, content_type).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = collect(&request, response.into_body()).await?;
                Ok((status, bytes.to_vec()))
            }
            Err(ClientError::Api {
                status,
                code,
                message,
                detail,
            }) => {
                let body = serde_json::to_vec(&ErrorBody {
                    code,
                    message,
                    detail,
                })
                .expect("serializes");
                Ok((status, body))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/gateway`: the agent itself.
    pub async fn gateway(&self) -> Result<GatewayInfo, ClientError> {
        self.json(Method::GET, "/v1/gateway".into(), ReqBody::empty(), None)
            .await
    }

    /// A call whose 2xx answer is a JSON `T`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: String,
        body: ReqBody,
        content_type: Option<&'static str>,
    ) -> Result<T, ClientError> {
        let request = describe(&method, &uri);
        let response = self.call(method, uri, body, content_type).await?;
        let bytes = collect(&request, response.into_body()).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| bad_response(&request, format!("{e}; the body was: {}", snippet(&bytes))))
    }

    /// Sends one request on a new connection; a non-2xx answer becomes [`ClientError::Api`].
    pub(crate) async fn call(
        &self,
        method: Method,
        uri: String,
        body: ReqBody,
        content_type: Option<&'static str>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.call_with(method, uri, body, content_type, None).await
    }

    /// [`Client::call`] with one more header.
    async fn call_with(
        &self,
        method: Method,
        uri: String,
        body: ReqBody,
        content_type: Option<&'static str>,
        header: Option<(&'static str, HeaderValue)>,
    ) -> Result<Response<Incoming>, ClientError> {
        let request = describe(&method, &uri);
        let (stream, send_failure) = Sending::new(self.connect().await?);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_error(&request, &e))?;
        // The connection task ends with the exchange; its errors also fail the response or
        // body futures, which is where they are reported.
        tokio::spawn(async move {
            let _ = connection.await;
        });

        let host = match &self.target {
            Target::Unix(_) => "localhost".to_string(),
            Target::Https { authority, .. } => authority.clone(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri.as_str())
            .header(HOST, host);
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        if let ReqBody::File { remaining, .. } = &body {
            builder = builder.header(CONTENT_LENGTH, HeaderValue::from(*remaining));
        }
        let req = builder.body(body).map_err(|e| ClientError::BadRequest {
            request: request.clone(),
            reason: e.to_string(),
        })?;
        let response = sender.send_request(req).await.map_err(|e| {
            // The answer is what the caller needs; only without one does the broken upload
            // explain the failure (the read side then merely saw the gateway hang up).
            match send_failure.get() {
                Some(sending) => ClientError::Http {
                    request: request.clone(),
                    reason: format!(
                        "the gateway stopped taking the request ({sending}) and closed the \
                         connection without an answer ({}); see the gateway's log for why",
                        reason(&e)
                    ),
                },
                None => http_error(&request, &e),
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = collect(&request, response.into_body()).await?;
        Err(error_answer(&request, status, &bytes))
    }
}

/// A non-2xx answer as an error: the API's own `{code, message, detail}`, or the body itself
/// when the server sent something else.
pub(crate) fn error_answer(request: &str, status: hyper::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(ErrorBody {
            code,
            message,
            detail,
        }) => ClientError::Api {
            status: status.as_u16(),
            code,
            message,
            detail,
        },
        Err(_) => bad_response(
            request,
            format!(
                "status {status} without an error object: {}",
                snippet(bytes)
            ),
        ),
    }
}

/// TLS settings trusting `ca_cert` (PEM), or the system's roots without one.
/// The TLS settings a client of `target` uses with `options` (its roots, a pinned CA, a
/// client certificate): for other HTTPS clients of the same server, such as the gateway's
/// pulls from its controller's registry.
pub fn tls_config(
    target: &str,
    options: &Options,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let ca_cert = options.ca_cert.as_deref();
    let failed = |reason: String| ClientError::Tls {
        target: target.to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| failed(format!("{}: not a PEM certificate: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(failed(format!("{}: no certificate in it", path.display())));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| failed(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?;
    let builder = match &options.pinned_ca_sha256 {
        Some(fingerprint) => {
            versions
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(
                    crate::pinned::PinnedCa::new(fingerprint, provider),
                ))
        }
        None => versions.with_root_certificates(roots),
    };
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| failed(format!("{}: not a PEM certificate: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| failed(format!("{}: not a PEM private key: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| failed(format!("the client certificate and key: {e}")))?
        }
    };
    Ok(std::sync::Arc::new(config))
}

/// Reads a whole (finite) body.
pub(crate) async fn collect(request: &str, body: Incoming) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| http_error(request, &e))
}

pub(crate) fn describe(method: &Method, uri: &str) -> String {
    format!("{method} {uri}")
}

pub(crate) fn bad_response(request: &str, reason: String) -> ClientError {
    ClientError::BadResponse {
        request: request.to_string(),
        reason,
    }
}

pub(crate) fn http_error(request: &str, error: &hyper::Error) -> ClientError {
    ClientError::Http {
        request: request.to_string(),
        reason: reason(error),
    }
}

/// hyper's own message is terse ("error from user's Body stream"); the cause says what broke.
fn reason(error: &hyper::Error) -> String {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// The start of a body, for error messages.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty)".to_string()
    } else if bytes.len() > MAX {
        format!("{text}…")
    } else {
        text.to_string()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any name is one path
/// segment or one query value.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Service names for a `stop=` query parameter, comma-separated, each percent-encoded.
fn stop_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| segment(n))
        .collect::<Vec<_>>()
        .join(",")
}

/// A query string under construction: empty, or `?k=v&k=v`.
#[derive(Default)]
struct Query(String);

/// Options of `POST /v1/services`.
#[derive(Debug, Clone, Default)]
pub struct InstallParams {
    /// Install only (`start=false`) when false.
    pub start: bool,
    /// Services to stop first to make room (the household confirmed).
    pub stop: Vec<String>,
    /// Operator only: install without a trusted signature (local development).
    pub allow_unsigned: bool,
    /// The registry reference the package came from.
    pub source: Option<String>,
    /// The text of the service manifest given beside a standard image (`--manifest FILE`),
    /// sent in [`crate::MANIFEST_HEADER`].
    pub manifest: Option<String>,
}

impl InstallParams {
    fn query(&self, dry_run: bool) -> Query {
        let mut query = Query::default();
        if dry_run {
            query.push("dry_run", "true");
        } else if !self.start {
            query.push("start", "false");
        }
        if !self.stop.is_empty() && !dry_run {
            query.0.push(if query.0.is_empty() { '?' } else { '&' });
            query.0.push_str(&format!("stop={}", stop_list(&self.stop)));
        }
        if self.allow_unsigned {
            query.push("allow_unsigned", "true");
        }
        if let Some(source) = &self.source {
            query.push("source", source);
        }
        query
    }
}

/// Options of `POST /v1/services/{name}/update`.
#[derive(Debug, Clone, Default)]
pub struct UpdateParams {
    pub allow_unsigned: bool,
    /// Seconds the new release has to prove itself; the agent's default when `None`.
    pub window_s: Option<u64>,
    pub source: Option<String>,
    /// The service manifest given beside a standard image, as for [`InstallParams`].
    pub manifest: Option<String>,
}

impl Query {
    fn push(&mut self, key: &str, value: &str) {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&segment(value));
    }
}

/// Splits a byte stream into newline-terminated lines.
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
}

impl LineSplitter {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// What is left after the last newline.
    fn rest(self) -> Vec<u8> {
        self.buf
    }
}

/// A connection that outlives a peer which stops taking the request: the gateway refuses an
/// upload from its path and headers alone (404, 403, 409, a bad token), answers at once and
/// hangs up without reading the package. Sending then fails with a broken pipe or a reset,
/// and had that error reached hyper it would have ended the exchange in place of the answer
/// already on its way. So such a failure is kept aside and sending simply stops, never to
/// resume, while reading goes on: the answer arrives as usual, or the gateway's hang-up ends
/// the exchange and the kept failure explains it.
struct Sending {
    io: Box<dyn Io>,
    failure: SendFailure,
}

/// Why sending stopped, once it did; shared with the call that reports the outcome.
type SendFailure = std::sync::Arc<std::sync::OnceLock<io::Error>>;

impl Sending {
    fn new(io: Box<dyn Io>) -> (Sending, SendFailure) {
        let failure = SendFailure::default();
        let sending = Sending {
            io,
            failure: SendFailure::clone(&failure),
        };
        (sending, failure)
    }

    /// Passes on the outcome of a write, flush or shutdown, unless it says the peer stopped
    /// taking bytes: that is kept, and the operation never completes. No wake-up is due for
    /// it: the reads hyper keeps polling wake the connection for the answer or the hang-up.
    fn sent<T>(&mut self, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                let _ = self.failure.set(e);
                Poll::Pending
            }
            other => other,
        }
    }

    fn stopped(&self) -> bool {
        self.failure.get().is_some()
    }
}

/// Whether a failed write means the peer hung up or stopped reading: its answer may then still
/// be waiting to be read. Any other failure ends the call at once, as before.
fn peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl AsyncRead for Sending {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Sending {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stopped() {
            return Poll::Pending;
        }
        let outcome = Pin::new(&mut this.io).poll_write(cx, buf);
        this.sent(outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stopped() {
            return Poll::Pending;
        }
        let outcome = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.sent(outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stopped() {
            return Poll::Pending;
        }
        let outcome = Pin::new(&mut this.io).poll_flush(cx);
        this.sent(outcome)
    }

    /// hyper shuts down once the exchange is over; with sending stopped there is nothing left
    /// to send, not even TLS's goodbye, and waiting for it would keep the connection forever.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stopped() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Ready(Err(e)) if peer_gone(&e) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// A request body: a buffer (or nothing), or a file streamed in chunks so that a package of
/// tens of megabytes is never held in memory.
pub(crate) enum ReqBody {
    Bytes(Option<Bytes>),
    File {
        file: tokio::fs::File,
        remaining: u64,
        buf: Box<[u8]>,
    },
}

impl ReqBody {
    pub(crate) fn empty() -> ReqBody {
        ReqBody::Bytes(None)
    }

    pub(crate) fn bytes(bytes: Vec<u8>) -> ReqBody {
        ReqBody::Bytes(Some(Bytes::from(bytes)))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ReqBody::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::File {
                file,
                remaining,
                buf,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = (*remaining).min(buf.len() as u64) as usize;
                let mut read = ReadBuf::new(&mut buf[..want]);
                match Pin::new(file).poll_read(cx, &mut read) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) if read.filled().is_empty() => {
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the package file got shorter while it was being sent",
                        ))))
                    }
                    Poll::Ready(Ok(())) => {
                        let chunk = Bytes::copy_from_slice(read.filled());
                        *remaining -= chunk.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Bytes(bytes) => bytes.is_none(),
            ReqBody::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Bytes(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ReqBody::Bytes(None) => SizeHint::with_exact(0),
            ReqBody::File { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A one-shot HTTP server on a Unix socket in a temp dir: reads one request, answers with
    /// `response` verbatim, and hands the raw request (head and body) back.
    struct Canned {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        request: tokio::task::JoinHandle<Vec<u8>>,
    }

    fn serve(response: Vec<u8>) -> Canned {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let request = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed before sending a request");
                got.extend_from_slice(&chunk[..n]);
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while got.len() < head_end + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed in the middle of the body");
                got.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(&response).await.unwrap();
            stream.shutdown().await.unwrap();
            got
        });
        Canned {
            _dir: dir,
            socket,
            request,
        }
    }

    fn client(c: &Canned) -> Client {
        Client::new(c.socket.to_str().unwrap()).unwrap()
    }

    fn fixed(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// A chunked response whose chunk boundaries fall wherever `pieces` says.
    fn chunked(content_type: &str, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for piece in pieces {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn summary(name: &str) -> ServiceSummary {
        ServiceSummary {
            name: name.into(),
            id: format!("acme/{name}"),
            provider: "acme".into(),
            version: "1.0.0".into(),
            state: "running".into(),
            health: "none".into(),
            pid: Some(42),
            desired: "running".into(),
            restarts: 0,
            priority: 50,
            exit_code: None,
            started_at_ms: Some(1_700_000_000_000),
            reason: None,
            signed_by: Some("0011223344556677".into()),
            unsigned: false,
            lan: Vec::new(),
        }
    }

    #[tokio::test]
    async fn list_decodes_the_summaries() {
        let body = serde_json::to_vec(&vec![summary("web"), summary("cam")]).unwrap();
        let server = serve(fixed("200 OK", "application/json", &body));
        let got = client(&server).list().await.unwrap();
        assert_eq!(got, vec![summary("web"), summary("cam")]);
        let request = server.request.await.unwrap();
        assert!(request.starts_with(b"GET /v1/services HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn error_status_carries_the_agent_message() {
        let body =
            br#"{"code":"not-found","message":"no service named `nope`; list them with `shg ps`"}"#;
        let server = serve(fixed("404 Not Found", "application/json", body));
        let err = client(&server).stop("nope").await.unwrap_err();
        match &err {
            ClientError::Api {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(*status, 404);
                assert_eq!(code, "not-found");
                assert_eq!(message, "no service named `nope`; list them with `shg ps`");
            }
            other => panic!("expected an API error, got {other:?}"),
        }
        assert!(err.to_string().starts_with("no service named `nope`"));
        let request = server.request.await.unwrap();
        assert!(request.starts_with(b"POST /v1/services/nope/stop HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn error_status_without_json_is_a_bad_response() {
        let server = serve(fixed(
            "502 Bad Gateway",
            "text/plain",
            b"upstream fell over",
        ));
        let err = client(&server).gateway().await.unwrap_err();
        assert!(matches!(err, ClientError::BadResponse { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("502") && text.contains("upstream fell over"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn undecodable_success_body_is_a_bad_response() {
        let server = serve(fixed("200 OK", "application/json", b"{\"not\":\"a list\"}"));
        let err = client(&server).list().await.unwrap_err();
        assert!(matches!(err, ClientError::BadResponse { .. }), "{err:?}");
        assert!(err.to_string().contains("GET /v1/services"), "{err}");
    }

    #[tokio::test]
    async fn absent_agent_says_how_to_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let err = Client::new(socket.to_str().unwrap())
            .unwrap()
            .list()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach the gateway at {}: ",
                socket.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("shg gateway run") && text.contains("SHG_GATEWAY"),
            "{text}"
        );
    }

    #[test]
    fn targets_are_a_socket_or_an_https_url() {
        assert!(matches!(
            Client::new("http://gw.example:8443"),
            Err(ClientError::BadTarget { .. })
        ));
        let err = Client::new("https://gw.example").unwrap_err();
        assert!(err.to_string().contains("give the port"), "{err}");
        let ok = Client::new("https://gw.example:8443").unwrap();
        assert_eq!(ok.target(), "https://gw.example:8443");
        assert!(Client::new("https://[::1]:8443").is_ok());
        assert!(matches!(Client::new(""), Err(ClientError::NoTarget)));
        assert_eq!(
            Client::new("/var/lib/shg/api.sock").unwrap().target(),
            "/var/lib/shg/api.sock"
        );
    }

    #[tokio::test]
    async fn install_streams_the_file_with_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("pkg.tar");
        // Bigger than one upload chunk, with a pattern so reordering would show.
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&package, &content).unwrap();
        let detail = ServiceDetail {
            summary: summary("web"),
            description: String::new(),
            image_digest: "sha256:00".into(),
            installed_at_ms: 1,
            manifest: serde_json::json!({}),
            address: None,
            previous_version: None,
            source: None,
            paths: crate::types::ServicePaths {
                rootfs: "/r".into(),
                data: "/d".into(),
                bundle: "/b".into(),
                logs: "/l".into(),
            },
            events: vec![],
        };
        let body = serde_json::to_vec(&detail).unwrap();
        let server = serve(fixed("201 Created", "application/json", &body));
        let got = client(&server).install(&package, false).await.unwrap();
        assert_eq!(got, detail);
        let request = server.request.await.unwrap();
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
        assert!(
            head.starts_with("post /v1/services?start=false http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("content-type: application/octet-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("content-length: 200000\r\n"), "{head}");
        assert_eq!(&request[head_end..], &content[..]);
    }

    #[tokio::test]
    async fn a_manifest_beside_the_image_travels_base64_in_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("image.tar");
        std::fs::write(&package, b"the image").unwrap();
        let server = serve(fixed(
            "200 OK",
            "application/json",
            b"{\"service\":\"web\",\"admitted\":true,\"message\":\"ok\"}",
        ));
        let manifest = "name = \"web\"\nversion = \"1.0.0\"\nprovider = \"acme\"\n";
        let params = InstallParams {
            start: true,
            manifest: Some(manifest.into()),
            ..InstallParams::default()
        };
        client(&server)
            .check_install_with(&package, &params)
            .await
            .unwrap();
        let request = server.request.await.unwrap();
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(manifest);
        assert!(
            head.contains(&format!("{}: {encoded}\r\n", crate::MANIFEST_HEADER)),
            "{head}"
        );
        // The body is the image, untouched.
        assert_eq!(&request[head_end..], b"the image");

        let too_big = InstallParams {
            manifest: Some("#".repeat(crate::MAX_MANIFEST + 1)),
            ..InstallParams::default()
        };
        let err = Client::new("/nonexistent.sock")
            .unwrap()
            .install_with(&package, &too_big)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at most 65536"), "{err}");
    }

    #[tokio::test]
    async fn install_of_a_missing_file_names_it() {
        let err = Client::new("/nonexistent.sock")
            .unwrap()
            .install(Path::new("/nonexistent/pkg.tar"), true)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Package { .. }));
        assert!(err
            .to_string()
            .starts_with("cannot read package /nonexistent/pkg.tar: "));
    }

    #[tokio::test]
    async fn logs_are_split_into_entries_across_chunks() {
        let entry = |stream: &str, text: &str, t: u64| LogEntry {
            time_ms: t,
            stream: stream.into(),
            text: text.into(),
        };
        let mut wire = Vec::new();
        for e in [entry("stdout", "hello", 1), entry("stderr", "oops", 2)] {
            wire.extend(serde_json::to_vec(&e).unwrap());
            wire.push(b'\n');
        }
        // The last line lacks its newline: it still counts.
        wire.extend(serde_json::to_vec(&entry("stdout", "bye", 3)).unwrap());
        let (a, rest) = wire.split_at(7);
        let (b, c) = rest.split_at(40);
        let server = serve(chunked("application/x-ndjson", &[a, b, c]));
        let mut got = Vec::new();
        client(&server)
            .logs("web", Some(10), true, |e| got.push(e))
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                entry("stdout", "hello", 1),
                entry("stderr", "oops", 2),
                entry("stdout", "bye", 3)
            ]
        );
        let request = server.request.await.unwrap();
        assert!(request.starts_with(b"GET /v1/services/web/logs?tail=10&follow=true HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_failing_callback_stops_the_logs() {
        let line = b"{\"time_ms\":1,\"stream\":\"stdout\",\"text\":\"x\"}\n";
        let server = serve(chunked("application/x-ndjson", &[line, line, line]));
        let mut calls = 0;
        let err = client(&server)
            .logs("web", None, false, |_| {
                calls += 1;
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(
            matches!(err, ClientError::Output { ref error } if error.kind() == io::ErrorKind::BrokenPipe)
        );
    }

    #[tokio::test]
    async fn exec_passes_output_through_and_returns_the_code() {
        let mut wire = exec_frames::encode(exec_frames::STDOUT, b"out1 ");
        wire.extend(exec_frames::encode(exec_frames::STDERR, b"err"));
        wire.extend(exec_frames::encode(exec_frames::STDOUT, b"out2"));
        wire.extend(exec_frames::encode_exit(7));
        let (a, b) = wire.split_at(3);
        let server = serve(chunked("application/octet-stream", &[a, b]));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = client(&server)
            .exec(
                "web",
                &["/bin/sh".into(), "-c".into(), "exit 7".into()],
                |d| out.extend_from_slice(d),
                |d| err.extend_from_slice(d),
            )
            .await
            .unwrap();
        assert_eq!(code, 7);
        assert_eq!(out, b"out1 out2");
        assert_eq!(err, b"err");
        let request = server.request.await.unwrap();
        let body_at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let sent: ExecRequest = serde_json::from_slice(&request[body_at..]).unwrap();
        assert_eq!(sent.command, ["/bin/sh", "-c", "exit 7"]);
    }

    #[tokio::test]
    async fn exec_without_exit_frame_is_a_bad_response() {
        let wire = exec_frames::encode(exec_frames::STDOUT, b"partial");
        let server = serve(chunked("application/octet-stream", &[&wire]));
        let err = client(&server)
            .exec("web", &["true".into()], |_| (), |_| ())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("without an exit code"), "{err}");
    }

    #[tokio::test]
    async fn names_and_query_values_are_encoded() {
        let server = serve(fixed("200 OK", "application/json", b"[]"));
        let got = client(&server)
            .events(Some(5), Some("a b/c"))
            .await
            .unwrap();
        assert!(got.is_empty());
        let request = server.request.await.unwrap();
        assert!(request.starts_with(b"GET /v1/events?since=5&service=a%20b%2Fc HTTP/1.1\r\n"));
    }
}
