//! What a caller follows as it happens: a service's log, and a command run inside a service.
//! The HTTP layer turns these into response bodies; the agent decides what is read, from
//! where, and what ends a stream.

use std::path::PathBuf;

use api::exec_frames;
use runtime::logfile::LogLine;
use tokio::io::AsyncReadExt;

use crate::auth::{Principal, ServiceAction};
use crate::{Agent, AgentError};

/// A service's log as `shg logs -f` follows it: the lines so far, then what comes.
pub struct LogFollower {
    name: String,
    dir: PathBuf,
    /// Where the last line handed out was in the log, and that line.
    last_idx: usize,
    last_line: Option<LogLine>,
}

impl LogFollower {
    /// The lines written since the last call; None once the service is gone (removed).
    pub fn poll(&mut self, agent: &Agent) -> Option<Vec<LogLine>> {
        if !agent.store().find(&self.name).is_ok_and(|r| r.is_some()) {
            return None;
        }
        let fresh = runtime::logfile::read_all(&self.dir).unwrap_or_default();
        // The log only grows at its end and loses whole segments at its start, so the last
        // line handed out is found again at or before its old index.
        let start = match &self.last_line {
            None => 0,
            Some(sent) => (0..=self.last_idx.min(fresh.len().saturating_sub(1)))
                .rev()
                .find(|&i| fresh.get(i) == Some(sent))
                .map(|i| i + 1)
                .unwrap_or_else(|| {
                    fresh
                        .iter()
                        .position(|l| l.time_ms > sent.time_ms)
                        .unwrap_or(fresh.len())
                }),
        };
        if fresh.len() > start {
            self.last_idx = fresh.len() - 1;
            self.last_line = fresh.last().cloned();
        }
        Some(fresh[start.min(fresh.len())..].to_vec())
    }
}

impl Agent {
    /// The last `tail` lines of `name`'s log (all without `tail`), and a follower that goes
    /// on from there; `who` must be allowed to read the log.
    pub fn logs(
        &self,
        who: &Principal,
        name: &str,
        tail: Option<usize>,
    ) -> Result<(Vec<LogLine>, LogFollower), AgentError> {
        self.access(who, name, ServiceAction::Logs)?;
        let dir = self.layout.service(name).logs();
        let mut lines = runtime::logfile::read_all(&dir).unwrap_or_default();
        // The follower goes on after the whole log, whatever part of it is shown.
        let follower = LogFollower {
            name: name.to_string(),
            dir,
            last_idx: lines.len().saturating_sub(1),
            last_line: lines.last().cloned(),
        };
        if let Some(tail) = tail {
            lines.drain(..lines.len().saturating_sub(tail));
        }
        Ok((lines, follower))
    }

    /// Runs `command` inside the running service `name` as its manifest's user; the frames
    /// (`api::exec_frames`: stdout, stderr, then the exit code) arrive on the receiver. When
    /// the receiver is dropped (the client hung up), the command is ended inside the
    /// container too.
    pub fn exec(
        &self,
        who: &Principal,
        name: &str,
        command: &[String],
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, AgentError> {
        self.access(who, name, ServiceAction::Exec)?;
        if command.is_empty() {
            return Err(AgentError::BadRequest(
                "exec request: `command` is empty; give the program to run".into(),
            ));
        }
        let rec = self.store().get(name)?;
        if rec.pid.is_none() {
            return Err(AgentError::Conflict(format!(
                "`{name}` is not running; start it with `shg start {name}`"
            )));
        }
        let manifest = crate::lifecycle::manifest_of(&rec)?;
        let (uid, gid) = manifest.run.user.map(|u| (u.uid, u.gid)).unwrap_or((0, 0));
        let mut child = self
            .exec_helper(name, uid, gid, command)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(AgentError::Helper)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            return Err(AgentError::Internal(
                "the runtime helper has no output pipes".into(),
            ));
        };
        tokio::spawn(async move {
            let (mut out_buf, mut err_buf) = (vec![0u8; 16384], vec![0u8; 16384]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let frame = tokio::select! {
                    // The client hung up: end the command inside the container too.
                    _ = tx.closed() => {
                        crate::lifecycle::end_helper(&mut child).await;
                        return;
                    }
                    n = stdout.read(&mut out_buf), if out_open => match n {
                        Ok(0) | Err(_) => { out_open = false; None }
                        Ok(n) => Some(exec_frames::encode(exec_frames::STDOUT, &out_buf[..n])),
                    },
                    n = stderr.read(&mut err_buf), if err_open => match n {
                        Ok(0) | Err(_) => { err_open = false; None }
                        Ok(n) => Some(exec_frames::encode(exec_frames::STDERR, &err_buf[..n])),
                    },
                };
                if let Some(frame) = frame {
                    if tx.send(frame).await.is_err() {
                        crate::lifecycle::end_helper(&mut child).await;
                        return;
                    }
                }
            }
            let code = match child.wait().await {
                Ok(s) => s.code().unwrap_or(
                    128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0),
                ),
                Err(_) => 126,
            };
            let _ = tx.send(exec_frames::encode_exit(code)).await;
        });
        Ok(rx)
    }
}
