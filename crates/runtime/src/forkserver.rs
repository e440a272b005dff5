//! The runtime helper as a fork server (`shg-runtime serve`).
//!
//! The agent starts it once and sends it one request per start. For each request it forks a
//! child, which does the work and answers. A start then costs a fork of this small
//! single-threaded process instead of an exec of the helper. The fork still never happens
//! in the agent's own multi-threaded process, and each request runs in a fresh copy of a
//! process that has done nothing but read requests.
//!
//! Protocol, on the server's stdin and stdout:
//! - a request is the words of a one-shot helper's command line (`create NAME --bundle B …`),
//!   separated by NUL bytes and ended by a newline;
//! - the answer is one line: the result (for `create`, the init's PID), or `!` and the reason
//!   the request failed.
//!
//! Requests are served one at a time, in order. The server exits when its stdin ends (the
//! agent went away).

use std::io::{BufRead, Write};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

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

/// Serves requests from stdin until it ends, each in a forked child that runs `handle`.
/// Returns the process's exit code.
///
/// Must run in a single-threaded process: the children run arbitrary code after the fork.
pub fn serve(handle: impl Fn(&[String]) -> Result<String, String>) -> i32 {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                eprintln!("shg-runtime serve: cannot read a request: {e}");
                return 1;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let words: Result<Vec<String>, _> = line
            .split(|&b| b == 0)
            .map(|w| String::from_utf8(w.to_vec()))
            .collect();
        let Ok(words) = words else {
            let _ = reply(&Err("the request is not UTF-8".into()));
            continue;
        };
        // SAFETY: this process has a single thread, so the child may run any code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let code = match reply(&handle(&words)) {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                // SAFETY: ends the child without running the parent's exit handlers or
                // flushing buffers it shares with the parent.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => {
                let status = loop {
                    match waitpid(child, None) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        other => break other,
                    }
                };
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
            Err(e) => {
                let _ = reply(&Err(format!("the runtime helper cannot fork: {e}")));
            }
        }
    }
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
