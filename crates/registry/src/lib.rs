//! Pulling a package from an OCI registry (the OCI distribution API) into an OCI layout tar
//! that `POST /v1/services` takes like any package file.
//!
//! Every blob lands in a content-addressed cache (`CACHE/blobs/sha256/HEX`), is checked
//! against its digest and declared size before it counts, and resumes from where an earlier
//! pull stopped (`HEX.partial` and an HTTP `Range` request). Registries on a loopback address
//! are spoken to over plain HTTP (a lab registry); every other over HTTPS with the system's
//! roots. Anonymous bearer tokens (`WWW-Authenticate: Bearer realm=…`) are fetched as
//! registries ask.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

/// Media type of an OCI image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the layer holding a package's signatures (`{"digest", "annotations"}`).
pub const SIGNATURE_MEDIA: &str = "application/vnd.shg.signature.v1+json";
/// The largest signature document accepted.
const MAX_SIGNATURES: usize = 64 << 10;
/// The largest manifest or index accepted.
const MAX_MANIFEST: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: {reason}")]
    Pull { reference: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `REGISTRY/REPOSITORY[:TAG|@sha256:HEX]`, as `registry.example:5000/acme/camera:1.2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Host and optional port.
    pub registry: String,
    pub repository: String,
    /// A tag, or a digest `sha256:HEX`.
    pub reference: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

impl Reference {
    /// Parses an image reference; `None` when `text` is not one (a file name, say). The
    /// registry part must look like a host (a dot or a port, or `localhost`).
    pub fn parse(text: &str) -> Option<Reference> {
        let (registry, rest) = text.split_once('/')?;
        let hostlike =
            (registry.contains('.') || registry.contains(':') || registry == "localhost")
                && registry
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'[')
                && !registry.contains("..");
        if !hostlike
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return None;
        }
        let (repository, reference) = match rest.split_once('@') {
            Some((repo, digest)) => {
                let hex = digest.strip_prefix("sha256:")?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                (repo, digest.to_ascii_lowercase())
            }
            None => match rest.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_string()),
                _ => (rest, "latest".to_string()),
            },
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        let tag_ok = reference.starts_with("sha256:")
            || (!reference.is_empty()
                && reference.len() <= 128
                && reference
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        (repo_ok && tag_ok).then(|| Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            reference,
        })
    }

    /// Whether the registry is on this machine (spoken to over plain HTTP).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
    }
}

/// How far a pull has come, in bytes of blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

struct Conn {
    reference: Reference,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    token: Option<String>,
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
}

impl Conn {
    fn fail(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Pull {
            reference: self.reference.to_string(),
            reason: reason.into(),
        }
    }

    /// One GET on `url` (an absolute `http(s)://` URL or a path on the registry).
    async fn get_once(
        &self,
        target: &str,
        headers: &[(&str, String)],
    ) -> Result<Answer, RegistryError> {
        self.request_once(hyper::Method::GET, target, headers, Bytes::new())
            .await
    }

    /// One request with `body` on `target` (an absolute `http(s)://` URL or a path).
    async fn request_once(
        &self,
        method: hyper::Method,
        target: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, RegistryError> {
        let (authority, path, https) = match target.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest
                    .split_once('/')
                    .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
                (authority.to_string(), path, scheme == "https")
            }
            None => (
                self.reference.registry.clone(),
                target.to_string(),
                self.tls.is_some(),
            ),
        };
        let addr = if authority.contains(':') && !authority.ends_with(']') {
            authority.clone()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| self.fail(format!("cannot connect to {addr}: {e}")))?;
        let verb = method.to_string();
        let mut request = Request::builder()
            .method(method)
            .uri(path.as_str())
            .header(HOST, authority.as_str());
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| self.fail(e.to_string()))?;
        let response = if https {
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| self.fail(format!("{host}: {e}")))?;
            let tls = self
                .tls
                .clone()
                .ok_or_else(|| self.fail("no TLS settings"))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| self.fail(format!("TLS with {addr}: {e}")))?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
        .map_err(|e| self.fail(format!("{verb} {path}: {e}")))?;
        let (parts, body) = response.into_parts();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GET with the registry's token (fetched once on a 401) and redirects followed.
    async fn get(&mut self, path: &str, extra: &[(&str, String)]) -> Result<Answer, RegistryError> {
        self.request(hyper::Method::GET, path, extra, Bytes::new())
            .await
    }

    /// A request with the registry's token (fetched once on a 401) and redirects followed.
    async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        extra: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, RegistryError> {
        let mut target = path.to_string();
        for _ in 0..5 {
            let mut headers: Vec<(&str, String)> = extra.to_vec();
            let same_host = !target.contains("://");
            if let (Some(token), true) = (&self.token, same_host) {
                headers.push((AUTHORIZATION.as_str(), format!("Bearer {token}")));
            }
            let answer = self
                .request_once(method.clone(), &target, &headers, body.clone())
                .await?;
            if answer.status == StatusCode::UNAUTHORIZED && self.token.is_none() {
                let challenge = answer
                    .headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.token = Some(self.fetch_token(&challenge).await?);
                continue;
            }
            if answer.status.is_redirection() && method == hyper::Method::GET {
                target = answer
                    .headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.fail("a redirect without a location"))?
                    .to_string();
                continue;
            }
            return Ok(answer);
        }
        Err(self.fail("too many redirects or authentications"))
    }

    /// An anonymous token from the realm a `Bearer` challenge names.
    async fn fetch_token(&mut self, challenge: &str) -> Result<String, RegistryError> {
        let params = challenge
            .strip_prefix("Bearer ")
            .ok_or_else(|| self.fail(format!("the registry wants credentials ({challenge:?}); only anonymous pulls are supported")))?;
        let field = |key: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm = field("realm").ok_or_else(|| self.fail("a token challenge without a realm"))?;
        let mut query = Vec::new();
        for key in ["service", "scope"] {
            if let Some(v) = field(key) {
                query.push(format!("{key}={}", v.replace(' ', "%20")));
            }
        }
        let url = format!("{realm}?{}", query.join("&"));
        let answer = self.get_once(&url, &[]).await?;
        if answer.status != StatusCode::OK {
            return Err(self.fail(format!("the token service said {}", answer.status)));
        }
        let body = collect(answer.body, 1 << 20)
            .await
            .map_err(|e| self.fail(e))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.fail(format!("token: {e}")))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| self.fail("the token service gave no token"))
    }
}

async fn send<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

async fn collect(mut body: hyper::body::Incoming, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > max {
                return Err(format!("more than {max} bytes"));
            }
        }
    }
    Ok(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A blob the manifest names.
struct Blob {
    digest: String,
    size: u64,
}

/// A connection to the registry of `reference`: plain HTTP on loopback, else HTTPS with the
/// system's roots.
fn connect(reference: &Reference) -> Result<Conn, RegistryError> {
    let tls = if reference.is_loopback() {
        None
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::Pull {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(std::sync::Arc::new(config))
    };
    Ok(Conn {
        reference: reference.clone(),
        tls,
        token: None,
    })
}

/// The image manifest `reference` names (an index resolved to its linux/amd64 entry), and
/// its digest; a reference by digest must match it.
async fn resolve(
    conn: &mut Conn,
    reference: &Reference,
) -> Result<(Vec<u8>, String), RegistryError> {
    let repo = reference.repository.clone();
    let accept = format!("{MEDIA_MANIFEST}, {MEDIA_INDEX}");
    let (mut manifest, mut digest) =
        fetch_manifest(conn, &repo, &reference.reference, &accept).await?;
    if reference.reference.starts_with("sha256:") && digest != reference.reference {
        return Err(conn.fail(format!(
            "the registry sent a manifest whose digest is {digest}"
        )));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| conn.fail(format!("manifest: {e}")))?;
    if json.get("mediaType").and_then(|m| m.as_str()) == Some(MEDIA_INDEX) {
        // An index: the linux/amd64 entry, or the only one.
        let entries = json["manifests"].as_array().cloned().unwrap_or_default();
        let pick = entries
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .or(if entries.len() == 1 {
                entries.first()
            } else {
                None
            })
            .ok_or_else(|| conn.fail("the index lists no linux/amd64 image"))?;
        let wanted = pick["digest"].as_str().unwrap_or_default().to_string();
        let (m, d) = fetch_manifest(conn, &repo, &wanted, MEDIA_MANIFEST).await?;
        if d != wanted {
            return Err(conn.fail(format!("manifest {wanted} arrived as {d}")));
        }
        (manifest, digest) = (m, d);
    }
    Ok((manifest, digest))
}

/// The digest of the image `reference` names and its config (the JSON document), fetched
/// without its layers and checked against its digest and size: what `shg sign IMAGE
/// --manifest` checks a manifest against before signing the pair.
pub async fn image_config(reference: &Reference) -> Result<(String, Vec<u8>), RegistryError> {
    let mut conn = connect(reference)?;
    let repo = reference.repository.clone();
    let (manifest, digest) = resolve(&mut conn, reference).await?;
    let json: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| conn.fail(format!("manifest: {e}")))?;
    let blob = json["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let size = json["config"]["size"].as_u64().unwrap_or(u64::MAX);
    if !blob.starts_with("sha256:") || size > MAX_MANIFEST as u64 {
        return Err(conn.fail(format!(
            "the image manifest names a config {blob:?} of {size} bytes; expected a sha256 digest and at most {MAX_MANIFEST} bytes"
        )));
    }
    let answer = conn.get(&format!("/v2/{repo}/blobs/{blob}"), &[]).await?;
    if answer.status != StatusCode::OK {
        return Err(conn.fail(format!(
            "the registry answered {} for the image config {blob}",
            answer.status
        )));
    }
    let bytes = collect(answer.body, MAX_MANIFEST)
        .await
        .map_err(|e| conn.fail(format!("image config {blob}: {e}")))?;
    if format!("sha256:{}", sha256_hex(&bytes)) != blob || bytes.len() as u64 != size {
        return Err(conn.fail(format!(
            "the image config {blob} does not match its digest and size"
        )));
    }
    Ok((digest, bytes))
}

/// Pulls `reference` into `out` (an OCI layout tar), keeping blobs in `cache`; `progress` is
/// told how many blob bytes are there. Returns the manifest's digest.
pub async fn pull(
    reference: &Reference,
    cache: &Path,
    out: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<String, RegistryError> {
    pull_over(connect(reference)?, reference, cache, out, progress).await
}

/// [`pull`] over HTTPS with `tls` (its own roots and client certificate), whatever the
/// registry's address: how a gateway pulls from its fleet controller.
pub async fn pull_with_tls(
    reference: &Reference,
    tls: std::sync::Arc<rustls::ClientConfig>,
    cache: &Path,
    out: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<String, RegistryError> {
    let conn = Conn {
        reference: reference.clone(),
        tls: Some(tls),
        token: None,
    };
    pull_over(conn, reference, cache, out, progress).await
}

async fn pull_over(
    mut conn: Conn,
    reference: &Reference,
    cache: &Path,
    out: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<String, RegistryError> {
    let repo = reference.repository.clone();
    let (manifest, digest) = resolve(&mut conn, reference).await?;
    let json: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| conn.fail(format!("manifest: {e}")))?;
    let mut blobs = Vec::new();
    for d in std::iter::once(&json["config"]).chain(json["layers"].as_array().into_iter().flatten())
    {
        let digest = d["digest"].as_str().unwrap_or_default().to_string();
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(conn.fail(format!(
                "the manifest names a blob {digest:?} that is not a sha256 digest"
            )));
        }
        let size = d["size"]
            .as_u64()
            .ok_or_else(|| conn.fail(format!("blob {digest} has no size")))?;
        blobs.push(Blob { digest, size });
    }

    let dir = cache.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    let missing: u64 = blobs
        .iter()
        .filter(|b| !dir.join(&b.digest[7..]).exists())
        .map(|b| b.size)
        .sum();
    let free = free_space(&dir).map_err(io_err(&dir))?;
    // The blobs, then the package written from them.
    if missing + total > free {
        return Err(conn.fail(format!(
            "needs {} MiB of disk in {} ({} MiB to download, {} MiB for the package), only {} MiB free; free some space or set XDG_CACHE_HOME elsewhere",
            (missing + total).div_ceil(1 << 20),
            dir.display(),
            missing.div_ceil(1 << 20),
            total.div_ceil(1 << 20),
            free >> 20
        )));
    }
    let mut done = 0;
    progress(Progress { done, total });
    for blob in &blobs {
        fetch_blob(&mut conn, &repo, blob, &dir, &mut |n| {
            progress(Progress {
                done: done + n,
                total,
            })
        })
        .await?;
        done += blob.size;
        progress(Progress { done, total });
    }
    let annotations = fetch_signatures(&mut conn, &repo, &digest).await?;
    write_layout(out, &manifest, &digest, &annotations, &blobs, &dir)?;
    Ok(digest)
}

async fn fetch_manifest(
    conn: &mut Conn,
    repo: &str,
    reference: &str,
    accept: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let answer = conn
        .get(&path, &[(ACCEPT.as_str(), accept.to_string())])
        .await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(conn.fail("no such image in the registry (check the repository and tag)"))
        }
        s => return Err(conn.fail(format!("the registry answered {s} for the manifest"))),
    }
    let body = collect(answer.body, MAX_MANIFEST)
        .await
        .map_err(|e| conn.fail(format!("manifest: {e}")))?;
    let digest = format!("sha256:{}", sha256_hex(&body));
    Ok((body, digest))
}

/// Downloads one blob into `dir` (resuming a `.partial`), checking size and digest.
async fn fetch_blob(
    conn: &mut Conn,
    repo: &str,
    blob: &Blob,
    dir: &Path,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), RegistryError> {
    let hex = &blob.digest[7..];
    let done_path = dir.join(hex);
    if done_path.exists() {
        return Ok(());
    }
    let partial = dir.join(format!("{hex}.partial"));
    let mut hasher = Sha256::new();
    let mut have = 0u64;
    if let Ok(mut f) = std::fs::File::open(&partial) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io_err(&partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
    }
    if have > blob.size {
        std::fs::remove_file(&partial).map_err(io_err(&partial))?;
        (hasher, have) = (Sha256::new(), 0);
    }
    let mut headers = Vec::new();
    if have > 0 {
        headers.push((RANGE.as_str(), format!("bytes={have}-")));
    }
    let answer = conn
        .get(&format!("/v2/{repo}/blobs/{}", blob.digest), &headers)
        .await?;
    let mut file = match answer.status {
        StatusCode::PARTIAL_CONTENT if have > 0 => std::fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .map_err(io_err(&partial))?,
        StatusCode::OK => {
            (hasher, have) = (Sha256::new(), 0);
            std::fs::File::create(&partial).map_err(io_err(&partial))?
        }
        s => {
            return Err(conn.fail(format!(
                "the registry answered {s} for blob {}",
                blob.digest
            )))
        }
    };
    progress(have);
    let mut body = answer.body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            conn.fail(format!(
                "blob {}: {e} (run the same command again to resume)",
                blob.digest
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        have += data.len() as u64;
        if have > blob.size {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(conn.fail(format!(
                "blob {} is larger than the {} bytes its manifest declares",
                blob.digest, blob.size
            )));
        }
        hasher.update(&data);
        file.write_all(&data).map_err(io_err(&partial))?;
        progress(have);
    }
    file.sync_all().map_err(io_err(&partial))?;
    if have != blob.size {
        return Err(conn.fail(format!(
            "blob {} stopped at {have} of {} bytes (run the same command again to resume)",
            blob.digest, blob.size
        )));
    }
    if hex::encode(hasher.finalize()) != hex {
        let _ = std::fs::remove_file(&partial);
        return Err(conn.fail(format!(
            "blob {} does not match its digest; it was discarded",
            blob.digest
        )));
    }
    std::fs::rename(&partial, &done_path).map_err(io_err(&done_path))
}

/// The tag under which a package's signatures are stored beside it in its repository
/// (`sha256-HEX.shgsig`; registries without the referrers API can hold it).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.shgsig", digest.replacen(':', "-", 1))
}

/// The signature annotations stored for `digest` in `repo` (none when there are none). They
/// are not trusted here: the gateway verifies them against its trust policy.
async fn fetch_signatures(
    conn: &mut Conn,
    repo: &str,
    digest: &str,
) -> Result<BTreeMap<String, String>, RegistryError> {
    let path = format!("/v2/{repo}/manifests/{}", signature_tag(digest));
    let answer = conn
        .get(&path, &[(ACCEPT.as_str(), MEDIA_MANIFEST.to_string())])
        .await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(BTreeMap::new()),
        s => return Err(conn.fail(format!("the registry answered {s} for the signatures"))),
    }
    let body = collect(answer.body, MAX_MANIFEST)
        .await
        .map_err(|e| conn.fail(format!("signatures: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| conn.fail(format!("signatures: {e}")))?;
    let mut annotations = BTreeMap::new();
    for layer in json["layers"].as_array().into_iter().flatten() {
        if layer["mediaType"] != SIGNATURE_MEDIA {
            continue;
        }
        let blob = layer["digest"].as_str().unwrap_or_default();
        let answer = conn.get(&format!("/v2/{repo}/blobs/{blob}"), &[]).await?;
        if answer.status != StatusCode::OK {
            return Err(conn.fail(format!(
                "the registry answered {} for signature blob {blob}",
                answer.status
            )));
        }
        let bytes = collect(answer.body, MAX_SIGNATURES)
            .await
            .map_err(|e| conn.fail(format!("signature blob {blob}: {e}")))?;
        if format!("sha256:{}", sha256_hex(&bytes)) != blob {
            return Err(conn.fail(format!("signature blob {blob} does not match its digest")));
        }
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| conn.fail(format!("signature blob {blob}: {e}")))?;
        // Signatures of another image under this tag are not this package's.
        if doc["digest"] != digest {
            continue;
        }
        for (k, v) in doc["annotations"].as_object().into_iter().flatten() {
            if let Some(v) = v.as_str() {
                annotations.insert(k.clone(), v.to_string());
            }
        }
    }
    Ok(annotations)
}

/// A package's signatures as the artifact stored under [`signature_tag`]: an image manifest
/// whose one layer is `{"digest": D, "annotations": {…}}`, with an empty config.
pub struct SignatureArtifact {
    /// The artifact's manifest, what the tag names.
    pub manifest: Vec<u8>,
    /// Its blobs (config, then the signatures document), each with its digest.
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl SignatureArtifact {
    /// The artifact carrying `annotations` for the image `digest`.
    pub fn new(digest: &str, annotations: &BTreeMap<String, String>) -> SignatureArtifact {
        let doc = serde_json::to_vec(
            &serde_json::json!({ "digest": digest, "annotations": annotations }),
        )
        .expect("JSON serializes");
        let config = b"{}".to_vec();
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let doc_digest = format!("sha256:{}", sha256_hex(&doc));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{ "mediaType": SIGNATURE_MEDIA, "digest": doc_digest, "size": doc.len() }],
        }))
        .expect("JSON serializes");
        SignatureArtifact {
            manifest,
            blobs: vec![(config_digest, config), (doc_digest, doc)],
        }
    }
}

/// Stores `annotations` (signatures) for the image `reference` names, beside the ones stored
/// already, as the artifact [`signature_tag`] in its repository. Returns the image's digest.
pub async fn push_signatures(
    reference: &Reference,
    annotations: impl Fn(&str) -> BTreeMap<String, String>,
) -> Result<String, RegistryError> {
    let mut conn = connect(reference)?;
    let repo = reference.repository.clone();
    let (_, digest) = resolve(&mut conn, reference).await?;
    let mut all = fetch_signatures(&mut conn, &repo, &digest).await?;
    all.extend(annotations(&digest));
    let artifact = SignatureArtifact::new(&digest, &all);
    for (blob_digest, bytes) in &artifact.blobs {
        push_blob(&mut conn, &repo, blob_digest, bytes.clone()).await?;
    }
    let manifest = artifact.manifest;
    let path = format!("/v2/{repo}/manifests/{}", signature_tag(&digest));
    let len = manifest.len().to_string();
    let answer = conn
        .request(
            hyper::Method::PUT,
            &path,
            &[
                (CONTENT_TYPE.as_str(), MEDIA_MANIFEST.to_string()),
                (CONTENT_LENGTH.as_str(), len),
            ],
            Bytes::from(manifest),
        )
        .await?;
    if !answer.status.is_success() {
        let body = collect(answer.body, 4096).await.unwrap_or_default();
        return Err(conn.fail(format!(
            "the registry refused the signatures ({}): {}",
            answer.status,
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(digest)
}

/// Uploads one blob (monolithic: POST for a session, then PUT with the bytes).
async fn push_blob(
    conn: &mut Conn,
    repo: &str,
    digest: &str,
    bytes: Vec<u8>,
) -> Result<(), RegistryError> {
    let head = conn.get(&format!("/v2/{repo}/blobs/{digest}"), &[]).await?;
    if head.status == StatusCode::OK {
        return Ok(());
    }
    let answer = conn
        .request(
            hyper::Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[(CONTENT_LENGTH.as_str(), "0".into())],
            Bytes::new(),
        )
        .await?;
    if answer.status != StatusCode::ACCEPTED {
        return Err(conn.fail(format!(
            "the registry answered {} to an upload (pushing needs a registry that accepts anonymous pushes)",
            answer.status
        )));
    }
    let location = answer
        .headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| conn.fail("an upload session without a location"))?
        .to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let target = format!("{location}{sep}digest={digest}");
    let len = bytes.len().to_string();
    let answer = conn
        .request(
            hyper::Method::PUT,
            &target,
            &[
                (CONTENT_TYPE.as_str(), "application/octet-stream".into()),
                (CONTENT_LENGTH.as_str(), len),
            ],
            Bytes::from(bytes),
        )
        .await?;
    if answer.status != StatusCode::CREATED {
        return Err(conn.fail(format!(
            "the registry answered {} to blob {digest}",
            answer.status
        )));
    }
    Ok(())
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we own; the path is a valid C string.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes the OCI layout tar: `oci-layout`, `index.json`, the manifest and every blob.
fn write_layout(
    out: &Path,
    manifest: &[u8],
    digest: &str,
    annotations: &BTreeMap<String, String>,
    blobs: &[Blob],
    dir: &Path,
) -> Result<(), RegistryError> {
    let file = std::fs::File::create(out).map_err(io_err(out))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut entry = serde_json::json!({ "mediaType": MEDIA_MANIFEST, "digest": digest, "size": manifest.len() });
    if !annotations.is_empty() {
        entry["annotations"] = serde_json::json!(annotations);
    }
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [entry] });
    let mut add = |name: &str, data: &mut dyn Read, size: u64| {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data)
            .map_err(io_err(out))
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add("oci-layout", &mut &layout[..], layout.len() as u64)?;
    let index = serde_json::to_vec(&index).unwrap_or_default();
    add("index.json", &mut &index[..], index.len() as u64)?;
    add(
        &format!("blobs/sha256/{}", &digest[7..]),
        &mut &manifest[..],
        manifest.len() as u64,
    )?;
    for blob in blobs {
        let path = dir.join(&blob.digest[7..]);
        let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
        add(
            &format!("blobs/sha256/{}", &blob.digest[7..]),
            &mut f,
            blob.size,
        )?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker_and_oci_tools_write_them() {
        let r = Reference::parse("registry.example:5000/acme/camera:1.2").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("registry.example:5000", "acme/camera", "1.2")
        );
        assert!(!r.is_loopback());
        let r = Reference::parse("127.0.0.1:5000/acme/camera").unwrap();
        assert_eq!(r.reference, "latest");
        assert!(r.is_loopback());
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/acme/cam@{digest}")).unwrap();
        assert_eq!(r.reference, digest);
        assert_eq!(r.to_string(), format!("localhost/acme/cam@{digest}"));
        for not in [
            "camera.tar",
            "./build/camera.tar",
            "acme/camera:1.2",
            "registry.example:5000/Acme/camera",
            "registry.example/acme/cam@sha256:abc",
            "registry.example/",
        ] {
            assert_eq!(Reference::parse(not), None, "{not}");
        }
    }
}
