//! Health checks: `exec` runs a command inside the service; `tcp` and `http` connect to the
//! service's own loopback from inside its network namespace.
//!
//! The tcp/http probes enter the namespace from a fresh thread made for that one probe, so no
//! thread of the agent's pool ever changes namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use manifest::HealthCheck;
use state::{Health, Note};

use crate::Agent;

/// Starts the health loop of the service whose init is `pid`; it ends when that PID is no
/// longer the service's.
pub fn spawn(agent: Arc<Agent>, name: String, pid: i32) {
    tokio::spawn(async move {
        let Ok(rec) = agent.store().get(&name) else {
            return;
        };
        let Ok(manifest) = crate::lifecycle::manifest_of(&rec) else {
            return;
        };
        let Some(health) = manifest.health else {
            return;
        };
        let uid_gid = manifest.run.user.map(|u| (u.uid, u.gid)).unwrap_or((0, 0));
        let started = tokio::time::Instant::now();
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(health.interval).await;
            let still_ours = agent
                .store()
                .find(&name)
                .ok()
                .flatten()
                .is_some_and(|r| r.pid == Some(pid));
            if !still_ours {
                return;
            }
            let ok = probe(&agent, &name, pid, &health.check, health.timeout, uid_gid).await;
            let in_grace = started.elapsed() < health.start_period;
            failures = if ok {
                0
            } else if in_grace {
                failures
            } else {
                failures + 1
            };
            let current = agent
                .store()
                .get(&name)
                .map(|r| r.health)
                .unwrap_or(Health::None);
            let next = if ok {
                Health::Healthy
            } else if failures >= health.retries {
                Health::Unhealthy
            } else {
                current
            };
            if next != current {
                let message = match next {
                    Health::Healthy => format!("`{name}` is healthy"),
                    _ => format!("`{name}` is unhealthy: {} checks failed in a row", failures),
                };
                let _ = agent
                    .store()
                    .update(&name, Some(Note::new("health", message)), |r| {
                        if r.pid == Some(pid) {
                            r.health = next;
                        }
                    });
            }
        }
    });
}

async fn probe(
    agent: &Arc<Agent>,
    name: &str,
    pid: i32,
    check: &HealthCheck,
    timeout: Duration,
    (uid, gid): (u32, u32),
) -> bool {
    match check {
        HealthCheck::Exec(command) => {
            let Ok(mut child) = agent
                .exec_helper(name, uid, gid, command)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            else {
                return false;
            };
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) => status.success(),
                _ => {
                    crate::lifecycle::end_helper(&mut child).await;
                    false
                }
            }
        }
        HealthCheck::Tcp(port) => {
            let port = *port;
            in_netns(pid, move || connect(port, timeout).is_ok()).await
        }
        HealthCheck::Http(url) => {
            let url = url.clone();
            in_netns(pid, move || http_ok(&url, timeout)).await
        }
    }
}

/// Runs `f` on a new thread inside the network namespace of `pid`; `false` when the
/// namespace cannot be entered.
async fn in_netns(pid: i32, f: impl FnOnce() -> bool + Send + 'static) -> bool {
    in_netns_of(pid, f).await.unwrap_or(false)
}

/// Runs `f` on a new thread inside the network namespace of `pid`; `None` when the namespace
/// cannot be entered.
async fn in_netns_of<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let done = (|| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            Some(f())
        })();
        let _ = tx.send(done);
    });
    rx.await.ok().flatten()
}

/// The most a service's metrics answer may weigh.
pub const METRICS_MAX_BYTES: usize = 1 << 20;

/// What a service's metrics URL answered: its content type and body.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Agent {
    /// GETs the URL of the service's `[metrics]` inside it, for its provider: the provider's
    /// own figures, read through the gateway. The operator and the household are refused
    /// (the provider's data), as for logs.
    pub async fn service_metrics(
        self: &Arc<Self>,
        who: &realm::Principal,
        name: &str,
    ) -> Result<ServiceMetrics, crate::AgentError> {
        use crate::AgentError;
        let rec = self.access(who, name, crate::auth::ServiceAction::Metrics)?;
        let manifest = crate::lifecycle::manifest_of(&rec)?;
        let Some(url) = manifest.metrics else {
            return Err(AgentError::Conflict(format!(
                "`{name}` declares no metrics; its provider adds [metrics] http = \"http://127.0.0.1:PORT/PATH\" to its manifest"
            )));
        };
        let Some(pid) = rec.pid else {
            return Err(AgentError::Conflict(format!(
                "`{name}` is not running; start it with `shg start {name}` to read its metrics"
            )));
        };
        let target = url.clone();
        let answer = in_netns_of(pid, move || http_get(&target, Duration::from_secs(5)))
            .await
            .ok_or_else(|| {
                AgentError::Busy(format!("`{name}` stopped while its metrics were asked"))
            })?;
        answer.map_err(|why| {
            AgentError::Busy(format!(
                "`{name}` did not answer its metrics at {url}: {why}"
            ))
        })
    }
}

/// GETs `url` (checked by the manifest: http on the loopback) over HTTP/1.0, reading at most
/// [`METRICS_MAX_BYTES`] of body; only a 200 answer counts.
fn http_get(url: &str, timeout: Duration) -> Result<ServiceMetrics, String> {
    let (authority, path, port) = loopback_target(url).ok_or("not an http:// URL")?;
    let mut stream = connect(port, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: shg-metrics\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take((METRICS_MAX_BYTES + 16 * 1024) as u64)
        .read_to_end(&mut answer)
        .map_err(|e| format!("the answer broke off: {e}"))?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no HTTP head")?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let body = answer[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the answer has no HTTP status")?;
    if status != 200 {
        return Err(format!("it answered HTTP {status}"));
    }
    if body.len() > METRICS_MAX_BYTES {
        return Err(format!("its answer is over {} bytes", METRICS_MAX_BYTES));
    }
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok(ServiceMetrics { content_type, body })
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// The authority, path and port of an `http://` URL on the service's loopback (the manifest
/// checked its host).
fn loopback_target(url: &str) -> Option<(&str, &str, u16)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(80);
    Some((authority, path, port))
}

/// GET the URL (host 127.0.0.1 or localhost, validated by the manifest); 2xx/3xx is healthy.
fn http_ok(url: &str, timeout: Duration) -> bool {
    let Some((authority, path, port)) = loopback_target(url) else {
        return false;
    };
    let Ok(mut stream) = connect(port, timeout) else {
        return false;
    };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: shg-health\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    matches!(status, Some(200..=399))
}
