//! The runtime helper as a fork server (`shg-runtime serve`).
//!
//! The agent starts it once and sends it one request per start. Each request is served by a
//! child of the server, forked ahead of time: while the server waits for the next request,
//! a spare child already waits for it on a pipe. A start then costs neither an exec of the
//! helper nor a fork, only handing the request over. The fork still never happens in the
//! agent's own multi-threaded process, and each request runs in a fresh copy of a process
//! that has done nothing but read requests.
//!
//! Protocol, on the server's stdin and stdout:
//! - a request is the words of a one-shot helper's command line (`create NAME --bundle B …`),
//!   separated by NUL bytes and ended by a newline;
//! - the answer is one line: the result (for `create`, the init's PID), or `!` and the reason
//!   the request failed.
//!
//! Requests are served one at a time, in order. The server exits when its stdin ends (the
//! agent went away); its spare child goes with it.

use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Encodes one request; `None` when a word holds a NUL byte or a newline, which the
/// protocol cannot carry.
pub fn request(words: &[&[u8]]) -> Option<Vec<u8>> {
    if words.iter().any(|w| w.contains(&0) || w.contains(&b'\n')) {
        return None;
    }
    let mut line = words.join(&0u8);
    line.push(b'\n');
    Some(line)
}

/// Decodes an answer line (without its newline): the result, or the reason for the failure.
pub fn answer(line: &str) -> Result<&str, &str> {
    match line.strip_prefix('!') {
        Some(reason) => Err(reason),
        None => Ok(line),
    }
}

/// Serves requests from stdin until it ends, each in a child forked ahead of time: the child
/// runs `prepare` at once, then `handle` with what it returned when the request comes.
/// Returns the process's exit code.
///
/// Must run in a single-threaded process: the children run arbitrary code after the fork.
pub fn serve<S>(
    prepare: impl Fn() -> S,
    handle: impl Fn(S, &[String]) -> Result<String, String>,
) -> i32 {
    let work = Work { prepare, handle };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    let mut spare: Option<Spare> = None;
    loop {
        // Forked now, between requests, rather than when the next one arrives.
        if spare.is_none() {
            spare = Spare::fork(&work).ok();
        }
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => {
                if let Some(spare) = spare {
                    spare.dismiss();
                }
                return 0;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("shg-runtime serve: cannot read a request: {e}");
                return 1;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if words(&line).is_err() {
            let _ = reply(&Err("the request is not UTF-8".into()));
            continue;
        }
        // A spare that died while it waited (killed by hand) never saw the request: hand it
        // to a fresh child instead.
        let child = match spare.take().map(|s| s.give(&line)) {
            Some(Ok(child)) => Ok(child),
            _ => Spare::fork(&work)
                .map_err(std::io::Error::from)
                .and_then(|s| s.give(&line)),
        };
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = reply(&Err(format!("the runtime helper cannot fork: {e}")));
                continue;
            }
        };
        let status = wait(child);
        // A child that answered exits 0; any other end means it did not answer.
        if !matches!(status, Ok(WaitStatus::Exited(_, 0))) {
            let reason = match status {
                Ok(WaitStatus::Exited(_, code)) => format!("exit code {code}"),
                Ok(WaitStatus::Signaled(_, signal, _)) => format!("signal {signal}"),
                other => format!("{other:?}"),
            };
            let _ = reply(&Err(format!(
                "the runtime helper's child ended without an answer ({reason})"
            )));
        }
    }
}

/// What a child does: ahead of its request, then with it.
struct Work<P, H> {
    prepare: P,
    handle: H,
}

/// A child forked ahead of its request, waiting for it on a pipe.
struct Spare {
    pid: Pid,
    /// The pipe's write end: the request, then the end of the pipe.
    requests: OwnedFd,
}

impl Spare {
    fn fork<S>(
        work: &Work<impl Fn() -> S, impl Fn(S, &[String]) -> Result<String, String>>,
    ) -> nix::Result<Spare> {
        let (from_server, requests) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let server = nix::unistd::getpid();
        // SAFETY: this process has a single thread, so the child may run any code.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(requests);
                // SAFETY: prctl with constant arguments; a spare must not outlive its server.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                if nix::unistd::getppid() != server {
                    // SAFETY: ends the child at once, as below.
                    unsafe { libc::_exit(1) }
                }
                let prepared = (work.prepare)();
                let mut line = Vec::new();
                let code = match std::fs::File::from(from_server).read_to_end(&mut line) {
                    // The server ended without a request for this child.
                    Ok(0) | Err(_) => 1,
                    Ok(_) => {
                        let result = words(&line).and_then(|words| (work.handle)(prepared, &words));
                        match reply(&result) {
                            Ok(()) => 0,
                            Err(_) => 1,
                        }
                    }
                };
                // SAFETY: ends the child without running the parent's exit handlers or
                // flushing buffers it shares with the parent.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(Spare {
                pid: child,
                requests,
            }),
        }
    }

    /// Hands `request` over; the child serves it and exits. An error means the child had
    /// died before: it never saw the request (and has been reaped).
    fn give(self, request: &[u8]) -> std::io::Result<Pid> {
        // Closing the pipe after the request tells the child it has all of it.
        let sent = std::fs::File::from(self.requests).write_all(request);
        if let Err(e) = sent {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = wait(self.pid);
            return Err(e);
        }
        Ok(self.pid)
    }

    /// Ends a spare that will get no request.
    fn dismiss(self) {
        drop(self.requests);
        let _ = wait(self.pid);
    }
}

fn wait(child: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// The words of a request line (without its newline).
fn words(line: &[u8]) -> Result<Vec<String>, String> {
    line.split(|&b| b == 0)
        .map(|w| String::from_utf8(w.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|_| "the request is not UTF-8".to_string())
}

/// Writes one answer line on stdout and flushes it.
fn reply(result: &Result<String, String>) -> std::io::Result<()> {
    let line = match result {
        Ok(text) => format!("{}\n", one_line(text)),
        Err(reason) => format!("!{}\n", one_line(reason)),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

fn one_line(text: &str) -> String {
    text.trim().replace('\n', "; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_its_words_between_nuls_and_a_newline() {
        assert_eq!(
            request(&[b"create", b"web", b"--bundle", b"/s/b c"]).unwrap(),
            b"create\0web\0--bundle\0/s/b c\n"
        );
        assert_eq!(request(&[b"create", b"a\nb"]), None);
        assert_eq!(request(&[b"create", b"a\0b"]), None);
    }

    #[test]
    fn an_answer_is_a_result_or_a_reason() {
        assert_eq!(answer("4242"), Ok("4242"));
        assert_eq!(answer("!no such bundle"), Err("no such bundle"));
    }
}
