//! Running the host's command-line tools (`ip`, `tc`, `nft`, `bridge`, `mkfs.ext4`, `mount`)
//! behind one small trait, so the code that decides which commands to run is tested on a fake
//! that records them, without root and without touching the host.
//!
//! [`System`] spawns the program; [`Recorder`] remembers every call and answers from a script.
//! A failure names the command line and carries what the program said on stderr.

use std::fmt;
use std::io::{self, Write as _};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Runs a program to completion.
pub trait Runner: Send + Sync {
    /// Runs `program` with `args`, feeding `stdin` to it when given; its stdout when it exits
    /// with status 0.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CommandError>;
}

/// A command that did not succeed: which one, and why.
#[derive(Debug)]
pub struct CommandError {
    pub program: String,
    pub args: Vec<String>,
    pub failure: Failure,
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// It could not be started (not installed, not executable).
    Spawn(io::Error),
    /// Its standard input could not be written.
    Feed(io::Error),
    /// Waiting for it failed.
    Wait(io::Error),
    /// It ran and exited with a failure: its exit code (`None` when a signal ended it) and
    /// what it wrote on stderr, trimmed.
    Exit { code: Option<i32>, stderr: String },
}

impl CommandError {
    pub fn new(program: &str, args: &[&str], failure: Failure) -> CommandError {
        CommandError {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            failure,
        }
    }

    /// The command line as an operator would type it.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Why it failed, without the command line: the program's stderr when it said something,
    /// else its exit status, or why it could not run at all.
    pub fn reason(&self) -> String {
        match &self.failure {
            Failure::Spawn(e) => format!("cannot run it: {e} (is it installed?)"),
            Failure::Feed(e) => format!("cannot feed it: {e}"),
            Failure::Wait(e) => e.to_string(),
            Failure::Exit { stderr, .. } if !stderr.is_empty() => stderr.clone(),
            Failure::Exit {
                code: Some(code), ..
            } => format!("exit status: {code}"),
            Failure::Exit { code: None, .. } => "ended by a signal".to_string(),
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed: {}", self.command_line(), self.reason())
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Spawn(e) | Failure::Feed(e) | Failure::Wait(e) => Some(e),
            Failure::Exit { .. } => None,
        }
    }
}

/// Runs commands on this host.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Runner for System {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CommandError> {
        let fail = |failure| CommandError::new(program, args, failure);
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(Failure::Spawn(e)))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| fail(Failure::Feed(e)))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(Failure::Wait(e)))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(fail(Failure::Exit {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }))
    }
}

/// One call a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

impl Call {
    /// The command line, as in a failure's message.
    pub fn line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An answer a [`Recorder`] gives to the commands whose line starts with a prefix.
#[derive(Debug, Clone)]
enum Answer {
    Output(String),
    Failure(String),
}

/// A fake runner: records every call, runs nothing. A command succeeds with empty output
/// unless an answer was set for a prefix of its line (the last one set wins).
#[derive(Debug, Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
    answers: Mutex<Vec<(String, Answer)>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Commands whose line starts with `prefix` print `stdout` and succeed.
    pub fn answer(&self, prefix: &str, stdout: &str) -> &Recorder {
        self.lock_answers()
            .push((prefix.to_string(), Answer::Output(stdout.to_string())));
        self
    }

    /// Commands whose line starts with `prefix` fail, saying `stderr`.
    pub fn fail(&self, prefix: &str, stderr: &str) -> &Recorder {
        self.lock_answers()
            .push((prefix.to_string(), Answer::Failure(stderr.to_string())));
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The command lines so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, Vec<(String, Answer)>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runner for Recorder {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CommandError> {
        let call = Call {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.map(String::from),
        };
        let line = call.line();
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
        let answer = self
            .lock_answers()
            .iter()
            .rev()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, a)| a.clone());
        match answer {
            None => Ok(String::new()),
            Some(Answer::Output(text)) => Ok(text),
            Some(Answer::Failure(stderr)) => Err(CommandError::new(
                program,
                args,
                Failure::Exit {
                    code: Some(1),
                    stderr,
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_command_and_says_what_it_said() {
        let err = System
            .run("sh", &["-c", "echo nope >&2; exit 3"], None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c echo nope >&2; exit 3` failed: nope"
        );
        assert!(matches!(err.failure, Failure::Exit { code: Some(3), .. }));
        let silent = System.run("sh", &["-c", "exit 4"], None).unwrap_err();
        assert_eq!(silent.reason(), "exit status: 4");
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        let out = System.run("cat", &[], Some("hello\n")).unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_missing_program_keeps_its_io_error() {
        let err = System
            .run("/nonexistent/shg-no-such-tool", &["x"], None)
            .unwrap_err();
        assert!(err.to_string().contains("is it installed?"), "{err}");
        let source = std::error::Error::source(&err).expect("the spawn error is kept");
        assert!(source.downcast_ref::<io::Error>().is_some());
    }

    #[test]
    fn the_recorder_answers_by_prefix_and_remembers_every_call() {
        let fake = Recorder::new();
        fake.answer("ip -j link", "[]")
            .fail("nft -f", "syntax error");
        assert_eq!(fake.run("ip", &["-j", "link", "show"], None).unwrap(), "[]");
        assert_eq!(fake.run("tc", &["qdisc"], None).unwrap(), "");
        let err = fake.run("nft", &["-f", "-"], Some("table")).unwrap_err();
        assert_eq!(err.to_string(), "`nft -f -` failed: syntax error");
        assert_eq!(fake.lines(), ["ip -j link show", "tc qdisc", "nft -f -"]);
        assert_eq!(fake.calls()[2].stdin.as_deref(), Some("table"));
    }
}
