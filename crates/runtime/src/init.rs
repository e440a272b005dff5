//! The init that runs as PID 1 of every service container (`shg-init init`).
//!
//! It starts the service's command as its only child, forwards signals to it, reaps every
//! zombie in the container, copies the child's stdout and stderr into the size-capped log, and
//! records the exit status in a file the agent reads — so logs and exit codes survive an agent
//! that is restarted or killed while the service runs.
//!
//! The agent's runtime helper hands the init three open files, at fixed descriptors:
//! [`LOG_FDS`] (the two log segments) and [`STATUS_FD`]. No host directory is mounted into the
//! container, and the init makes itself non-dumpable so the service cannot reach these
//! descriptors through /proc/1/fd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::logfile::{now_ms, LineBuffer, LogWriter, Stream};

/// Descriptors of the two log segments inside the container.
pub const LOG_FDS: [i32; 2] = [3, 4];
/// Descriptor of the exit-status file inside the container.
pub const STATUS_FD: i32 = 5;

/// What the init records when the service's command ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code as a shell reports it: the code, or 128 + the signal number.
    pub code: i32,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    pub finished_ms: u64,
    /// Why the command could not be started at all.
    pub error: Option<String>,
}

/// `shg-init init --uid U --gid G --log-segment BYTES -- CMD…` (PID 1 of a container) or
/// `shg-init enter -- CMD…` (a command run inside a container by `shg exec`): `args` after
/// the program name. Returns the exit code.
pub fn main_with_args(args: &[String]) -> i32 {
    let (verb, rest) = match args.split_first() {
        Some((verb, rest)) => (verb.as_str(), rest),
        None => ("", args),
    };
    let parsed = crate::args::Args::parse(rest);
    match verb {
        "init" if parsed.command.is_empty() => {
            eprintln!("shg-init: no command given after `--`");
            127
        }
        "init" => run(InitOptions {
            uid: parsed.num("uid", 0) as u32,
            gid: parsed.num("gid", 0) as u32,
            log_segment: parsed.num("log-segment", 1 << 20),
            command: parsed.command,
        }),
        "enter" => enter(&parsed.command),
        other => {
            eprintln!("shg-init: unknown verb {other:?}: give `init` or `enter`");
            2
        }
    }
}

pub struct InitOptions {
    pub command: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub log_segment: u64,
}

const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Runs the init and returns the exit code for the init itself.
pub fn run(opts: InitOptions) -> i32 {
    // The filter first, unless the runtime loaded it before the exec (the agent's does, runc
    // does not). A failure is recorded below, where the log and the status file are at hand;
    // the command never runs.
    let filtered = crate::seccomp::load_unless_filtered();
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    for fd in LOG_FDS.iter().chain([&STATUS_FD]) {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
            eprintln!("shg-init: descriptor {fd} is not open; the runtime must pass the log and status files as fds 3, 4 and 5 (runc: --preserve-fds 3)");
            return 125;
        }
    }
    // SAFETY: these descriptors were handed to us open by the runtime helper (checked above)
    // and nothing else in this process owns them.
    let (logs, mut status) = unsafe {
        (
            [File::from_raw_fd(LOG_FDS[0]), File::from_raw_fd(LOG_FDS[1])],
            File::from_raw_fd(STATUS_FD),
        )
    };
    for fd in LOG_FDS.iter().chain([&STATUS_FD]) {
        // SAFETY: fcntl on a descriptor we own; keeps the service's command from inheriting it.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mut log = match LogWriter::new(logs, opts.log_segment) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("shg-init: cannot open the log: {e}");
            return 125;
        }
    };

    let result = match filtered {
        Ok(()) => supervise(&opts, &mut log),
        Err(e) => Err(format!(
            "cannot load the seccomp filter ({e}); the command was not run. The runtime must set \
             no_new_privs (the bundle's process.noNewPrivileges)"
        )),
    };
    let exit = match result {
        Ok(exit) => exit,
        Err(error) => {
            let _ = log.write_line(Stream::Stderr, format!("shg-init: {error}").as_bytes());
            ExitStatus {
                code: 127,
                signal: None,
                finished_ms: now_ms(),
                error: Some(error),
            }
        }
    };
    let text = serde_json::to_vec(&exit).expect("exit status serializes");
    let _ = status.set_len(0);
    let _ = status.seek(SeekFrom::Start(0));
    let _ = status.write_all(&text);
    // Not synced: the page cache outlives an agent that died, which is what the file is for;
    // a power cut ends the container too, and the agent then finds no status and restarts by
    // the policy. An fsync here cost every exit a disk flush.
    exit.code
}

fn supervise(opts: &InitOptions, log: &mut LogWriter) -> Result<ExitStatus, String> {
    let mut mask = SigSet::empty();
    for sig in FORWARDED.iter().chain([&Signal::SIGCHLD]) {
        mask.add(*sig);
    }
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;

    let (out_r, out_w) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_r, err_w) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (uid, gid) = (opts.uid, opts.gid);
    let mut command = Command::new(&opts.command[0]);
    command
        .args(&opts.command[1..])
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w);
    // SAFETY: the closure only makes async-signal-safe system calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let empty = SigSet::empty();
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&empty),
                None,
            )?;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", opts.command[0]))?;
    drop(command);
    let child_pid = Pid::from_raw(child.id() as i32);

    let mut streams = [
        (out_r, LineBuffer::default(), Stream::Stdout, true),
        (err_r, LineBuffer::default(), Stream::Stderr, true),
    ];
    let mut exit: Option<ExitStatus> = None;
    let mut drain_deadline: Option<u64> = None;
    // On the stack, and small: every container's init keeps it for its whole life, and a
    // 64 KiB one on the heap made about 50 KiB more of each init's memory private. A fuller
    // pipe takes a few more turns of the loop.
    let mut buf = [0u8; 8 * 1024];
    loop {
        let open: Vec<usize> = (0..2).filter(|&i| streams[i].3).collect();
        if let Some(deadline) = drain_deadline {
            // The command is gone: stop once its output is drained, or when a descendant
            // keeps the pipes open for longer than a moment.
            if open.is_empty() || now_ms() >= deadline {
                break;
            }
        }
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        for &i in &open {
            fds.push(PollFd::new(streams[i].0.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if drain_deadline.is_some() {
            PollTimeout::from(50u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = sigfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                if sig == Signal::SIGCHLD {
                    reap(child_pid, &mut exit);
                    if exit.is_some() && drain_deadline.is_none() {
                        drain_deadline = Some(now_ms() + 200);
                    }
                } else if exit.is_none() {
                    let _ = kill(child_pid, sig);
                }
            }
        }
        for (slot, &i) in open.iter().enumerate() {
            if !ready[slot + 1] {
                continue;
            }
            let (pipe, lines, stream, is_open) = &mut streams[i];
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => {
                    *is_open = false;
                    lines.finish(|l| {
                        let _ = log.write_line(*stream, l);
                    });
                }
                Ok(n) => lines.feed(&buf[..n], |l| {
                    let _ = log.write_line(*stream, l);
                }),
            }
        }
    }
    for (_, lines, stream, _) in &mut streams {
        lines.finish(|l| {
            let _ = log.write_line(*stream, l);
        });
    }
    Ok(exit.expect("the loop ends only after the command exited"))
}

/// Reaps every exited process in the container, recording the command's own status.
fn reap(child: Pid, exit: &mut Option<ExitStatus>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                *exit = Some(ExitStatus {
                    code,
                    signal: None,
                    finished_ms: now_ms(),
                    error: None,
                });
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                let signal = sig as i32;
                *exit = Some(ExitStatus {
                    code: 128 + signal,
                    signal: Some(signal),
                    finished_ms: now_ms(),
                    error: None,
                });
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads the status an init recorded, if the command has ended.
pub fn read_status(path: &std::path::Path) -> Option<ExitStatus> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `shg-init enter -- CMD…`: the first step of a process joining a running container (exec and
/// exec health checks). Loads the seccomp filter, as the init does, then becomes `CMD`.
/// Returns only on failure.
pub fn enter(command: &[String]) -> i32 {
    if command.is_empty() {
        eprintln!("shg-init enter: no command given after `--`");
        return 127;
    }
    if let Err(e) = crate::seccomp::load_unless_filtered() {
        eprintln!("shg-init enter: cannot load the seccomp filter ({e}); the command was not run");
        return 126;
    }
    // Its own process group, so the runtime helper can end it with everything it started.
    // A session leader (as libcontainer makes it) already leads its group; then this fails
    // harmlessly.
    // SAFETY: setpgid on ourselves with constant arguments.
    unsafe { libc::setpgid(0, 0) };
    let err = Command::new(&command[0]).args(&command[1..]).exec();
    eprintln!("shg: cannot run {:?}: {err}", command[0]);
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
