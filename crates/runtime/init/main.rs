//! `shg-init`: PID 1 of every service container (`init`), and the first step of every process
//! `shg exec` starts in one (`enter`). Bind-mounted read-only at `/.shg/init`.
//!
//! `shg-init init --uid U --gid G --log-segment BYTES -- CMD…` starts the service's command as
//! its only child, forwards signals to it, reaps every zombie in the container, copies the
//! child's stdout and stderr into the size-capped log, and records the exit status in a file
//! the agent reads (`runtime::init::ExitStatus`), so logs and exit codes survive an agent
//! that is restarted or killed while the service runs. The runtime hands it three open files
//! at fixed descriptors: the two log segments (3, 4) and the status file (5), and maybe the
//! exit notice (6), which it closes as soon as the status is written. It makes itself
//! non-dumpable, so the service cannot reach them through /proc/1/fd.
//!
//! `shg-init enter -- CMD…` loads the seccomp filter, as the init does, then becomes `CMD`.
//!
//! Built without the standard library or a C library (`runtime/build.rs` compiles this file
//! with `rustc`, `panic=abort`, as a static executable with its own `_start`): it runs in
//! every start, and a static glibc program spends half a millisecond of each exec in its own
//! start-up here (dozens of `cpuid`s, each a trap to the hypervisor), and keeps some 90 KB of
//! private memory in every container. This one does neither. It allocates nothing.

#![no_std]
#![no_main]
#![no_builtins]

mod mem;
mod sys;
mod text;

use sys::{Errno, PollFd};
use text::{Lines, Log, Stream, Text};

/// The log segments' and the status file's descriptors (`runtime::init::LOG_FDS`, `STATUS_FD`).
const LOG_FDS: [i32; 2] = [3, 4];
const STATUS_FD: i32 = 5;
/// The exit notice, when the runtime passes one (`runtime::init::EXIT_FD`): closed as soon as
/// the status is written.
const EXIT_FD: i32 = 6;

/// Signals passed on to the command (`runtime::init::FORWARDED`).
const FORWARDED: [i32; 7] = [
    sys::SIGTERM,
    sys::SIGINT,
    sys::SIGHUP,
    sys::SIGQUIT,
    sys::SIGUSR1,
    sys::SIGUSR2,
    sys::SIGWINCH,
];

/// The seccomp program, compiled from `src/seccomp_rules.rs` by `build.rs`.
const PROGRAM_LEN: usize = include_bytes!(env!("SHG_SECCOMP_BPF")).len();
#[repr(C, align(8))]
struct Aligned([u8; PROGRAM_LEN]);
static PROGRAM: Aligned = Aligned(*include_bytes!(env!("SHG_SECCOMP_BPF")));

/// The two streams' line buffers. In `.bss`, so a page of them takes memory only once
/// output has reached it: a quiet service's init keeps about 50 KB, not 80.
static mut STDOUT_LINES: [u8; text::MAX_LINE] = [0; text::MAX_LINE];
static mut STDERR_LINES: [u8; text::MAX_LINE] = [0; text::MAX_LINE];

/// An error message: 1 KiB at most (a long command name cuts off what follows it).
type Message = Text<1024>;

// The entry point: `main` gets the stack pointer the kernel started the process with, and
// no frame to return to.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {main}",
    main = sym main,
);
#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, xzr",
    "mov x30, xzr",
    "mov x0, sp",
    "bl {main}",
    main = sym main,
);

/// The process's arguments and environment, as the kernel laid them out on the stack.
struct Args {
    argc: usize,
    argv: *const *const u8,
    envp: *const *const u8,
}

impl Args {
    /// Argument `i` (without its NUL), or nothing past the end.
    fn get(&self, i: usize) -> Option<&'static [u8]> {
        // SAFETY: argv holds argc pointers to NUL-terminated strings that live as long as the
        // process.
        (i < self.argc).then(|| unsafe { c_str(*self.argv.add(i)) })
    }

    /// The NULL-terminated array of the arguments from `i` on.
    fn from(&self, i: usize) -> *const *const u8 {
        // SAFETY: i <= argc, and argv[argc] is the terminating NULL.
        unsafe { self.argv.add(i.min(self.argc)) }
    }
}

/// # Safety
/// `p` points at a NUL-terminated string that lives as long as the process.
unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut len = 0;
    // SAFETY: the string ends with a NUL, so every byte up to it may be read.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes just read.
    unsafe { core::slice::from_raw_parts(p, len) }
}

/// # Safety
/// Called once, by `_start`, with the stack pointer the kernel started the process with.
unsafe extern "C" fn main(stack: *const usize) -> ! {
    // SAFETY: the kernel's initial stack: argc, argc argument pointers, NULL, environment
    // pointers, NULL.
    let args = unsafe {
        let argc = *stack;
        Args {
            argc,
            argv: stack.add(1) as *const *const u8,
            envp: stack.add(argc + 2) as *const *const u8,
        }
    };
    let code = match args.get(1) {
        Some(b"init") => init(&args),
        Some(b"enter") => enter(&args),
        verb => {
            let mut m = Message::new();
            m.push(b"shg-init: unknown verb ")
                .quoted(verb.unwrap_or_default())
                .push(b": give `init` or `enter`\n");
            let _ = sys::write_all(2, m.as_bytes());
            2
        }
    };
    sys::exit(code)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    let _ = sys::write_all(2, b"shg-init: internal error\n");
    sys::exit(125)
}

/// What `init` was asked for.
struct Options {
    uid: u32,
    gid: u32,
    log_segment: u64,
    /// Index of the command's first argument.
    command: usize,
}

/// `--flag value` pairs, then the command after `--` (`runtime::args`).
fn options(args: &Args) -> Options {
    let mut opts = Options {
        uid: 0,
        gid: 0,
        log_segment: 1 << 20,
        command: args.argc,
    };
    let mut i = 2;
    while let Some(arg) = args.get(i) {
        if arg == b"--" {
            opts.command = i + 1;
            break;
        }
        let value = args.get(i + 1).and_then(number);
        match (arg, value) {
            (b"--uid", Some(v)) => opts.uid = v as u32,
            (b"--gid", Some(v)) => opts.gid = v as u32,
            (b"--log-segment", Some(v)) => opts.log_segment = v,
            _ => {}
        }
        i += if arg.starts_with(b"--") { 2 } else { 1 };
    }
    opts
}

fn number(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add((d - b'0') as u64))
            .flatten()
    })
}

/// Loads the filter unless one is in force: the agent's runtime loads it before it execs the
/// init, and the filter denies `seccomp(2)`, so a second load would fail. Under another
/// runtime (`runc run` of the bundle) nothing is loaded before the init.
fn load_filter() -> Result<(), Errno> {
    // Only in the build the tests run under qemu-user (`--cfg shg_init_emulated`), which
    // answers neither seccomp(2) nor PR_GET_SECCOMP: the filter is left out there.
    if cfg!(shg_init_emulated) {
        return Ok(());
    }
    const SECCOMP_MODE_FILTER: usize = 2;
    if sys::prctl(sys::PR_GET_SECCOMP, 0) == Ok(SECCOMP_MODE_FILTER) {
        return Ok(());
    }
    let bytes = &PROGRAM.0;
    // SAFETY: the program is a whole number of 8-byte `struct sock_filter`s (`build.rs`
    // exports them so), and `Aligned` gives it their alignment.
    let program = unsafe {
        core::slice::from_raw_parts(bytes.as_ptr() as *const sys::SockFilter, bytes.len() / 8)
    };
    sys::seccomp_filter(program)
}

fn init(args: &Args) -> i32 {
    let opts = options(args);
    if opts.command >= args.argc {
        let _ = sys::write_all(2, b"shg-init: no command given after `--`\n");
        return 127;
    }
    // The filter first. A failure is recorded below, where the log and the status file are
    // at hand; the command never runs.
    let filtered = load_filter();
    let _ = sys::prctl(sys::PR_SET_DUMPABLE, 0);
    for fd in LOG_FDS.into_iter().chain([STATUS_FD]) {
        if sys::fcntl(fd, sys::F_GETFD, 0).is_err() {
            let mut m = Message::new();
            m.push(b"shg-init: descriptor ").num(fd as u64).push(
                b" is not open; the runtime must pass the log and status files as fds 3, 4 \
                  and 5 (runc: --preserve-fds 3)\n",
            );
            let _ = sys::write_all(2, m.as_bytes());
            return 125;
        }
        // Keeps the command from inheriting it.
        let _ = sys::fcntl(fd, sys::F_SETFD, sys::FD_CLOEXEC);
    }
    // Nor any other descriptor the runtime left open (libcontainer closes them; another
    // runtime may not).
    let _ = sys::cloexec_from(STATUS_FD + 1);
    let mut log = match Log::new(LOG_FDS, opts.log_segment) {
        Ok(log) => log,
        Err(e) => {
            let mut m = Message::new();
            m.push(b"shg-init: cannot open the log: ")
                .errno(e)
                .push(b"\n");
            let _ = sys::write_all(2, m.as_bytes());
            return 125;
        }
    };

    let mut error = Message::new();
    let exit = match filtered {
        Ok(()) => supervise(args, &opts, &mut log, &mut error),
        Err(e) => {
            error
                .push(b"cannot load the seccomp filter (")
                .errno(e)
                .push(
                    b"); the command was not run. The runtime must set no_new_privs (the bundle's \
                  process.noNewPrivileges)",
                );
            None
        }
    };
    let (code, signal, finished_ms) = match exit {
        Some((sys::Ended::Exited(code), at)) => (code, None, at),
        Some((sys::Ended::Signaled(signal), at)) => (128 + signal, Some(signal), at),
        None => {
            let mut line = Message::new();
            line.push(b"shg-init: ").push(error.as_bytes());
            log.line(Stream::Stderr, line.as_bytes());
            (127, None, sys::now_ms())
        }
    };
    // `runtime::init::ExitStatus` as JSON: room for the error escaped at its longest (six
    // bytes for one), so the JSON always ends.
    let mut status = Text::<{ 6 * 1024 + 128 }>::new();
    status
        .push(b"{\"code\":")
        .num(code as u64)
        .push(b",\"signal\":");
    match signal {
        Some(signal) => status.num(signal as u64),
        None => status.push(b"null"),
    };
    status
        .push(b",\"finished_ms\":")
        .num(finished_ms)
        .push(b",\"error\":");
    if exit.is_some() {
        status.push(b"null");
    } else {
        status.json_string(error.as_bytes());
    }
    status.push(b"}");
    // Written over what the file held, then cut to length: a truncation to zero first would
    // make ext4 flush the file to disk as the init exits. (`runc run` with the file opened
    // for appending: appending is turned off, or the write would land at the end.)
    if let Ok(flags) = sys::fcntl(STATUS_FD, sys::F_GETFL, 0) {
        let _ = sys::fcntl(STATUS_FD, sys::F_SETFL, flags & !sys::O_APPEND);
    }
    if sys::pwrite_all(STATUS_FD, status.as_bytes()).is_ok() {
        let _ = sys::ftruncate(STATUS_FD, status.as_bytes().len() as u64);
    }
    // The agent reads the status as soon as its end of the notice reports this close, while
    // the kernel still tears the container down. (Without a notice, or under a runtime that
    // put something else at this number, closing it early changes nothing: the exit would.)
    sys::close(EXIT_FD);
    // Not synced: the page cache outlives an agent that died, which is what the file is for;
    // a power cut ends the container too, and the agent then finds no status and restarts by
    // the policy. An fsync here cost every exit a disk flush.
    code
}

/// Runs the command to its end: how it ended and when (Unix milliseconds), or nothing, with
/// `error` saying why it could not be started.
fn supervise(
    args: &Args,
    opts: &Options,
    log: &mut Log,
    error: &mut Message,
) -> Option<(sys::Ended, u64)> {
    let name = args.get(opts.command).unwrap_or_default();
    let mut failed = |what: &[u8], e: Errno| {
        error.push(what).errno(e);
        None
    };
    let mask = sys::sigset(&FORWARDED) | sys::sigset(&[sys::SIGCHLD]);
    if let Err(e) = sys::sigprocmask(mask, false) {
        return failed(b"cannot block signals: ", e);
    }
    let sigfd = match sys::signalfd(mask) {
        Ok(fd) => fd,
        Err(e) => return failed(b"cannot create a signalfd: ", e),
    };
    let null = match sys::open(b"/dev/null\0", sys::O_RDONLY | sys::O_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => return failed(b"cannot open /dev/null: ", e),
    };
    let mut pipes = [(0, 0); 3];
    for pipe in &mut pipes {
        *pipe = match sys::pipe() {
            Ok(pipe) => pipe,
            Err(e) => return failed(b"cannot create a pipe: ", e),
        };
    }
    let [(out_r, out_w), (err_r, err_w), (report_r, report_w)] = pipes;
    let child = match sys::fork() {
        Ok(0) => {
            // The child: its stdio, its user, then the command. A failure is reported to the
            // parent through `report_w` (closed by a successful exec).
            let e = sys::sigprocmask(0, true)
                .and_then(|()| sys::default_action(sys::SIGPIPE))
                .and_then(|()| sys::dup2(null, 0))
                .and_then(|()| sys::dup2(out_w, 1))
                .and_then(|()| sys::dup2(err_w, 2))
                .and_then(|()| sys::become_user(opts.uid, opts.gid))
                .map_or_else(|e| e, |()| exec(args, opts.command));
            let _ = sys::write_all(report_w, &e.0.to_ne_bytes());
            sys::exit(127)
        }
        Ok(pid) => pid,
        Err(e) => {
            error
                .push(b"cannot start ")
                .quoted(name)
                .push(b": ")
                .errno(e);
            return None;
        }
    };
    for fd in [null, out_w, err_w, report_w] {
        sys::close(fd);
    }
    // Nothing to read: the command runs. Four bytes: the error number that stopped it.
    let mut report = [0u8; 4];
    let reported = read_full(report_r, &mut report);
    sys::close(report_r);
    if reported == 4 {
        let mut exit = None;
        reap(child, &mut exit);
        error
            .push(b"cannot start ")
            .quoted(name)
            .push(b": ")
            .errno(Errno(i32::from_ne_bytes(report)));
        return None;
    }

    let (out_buf, err_buf) = (&raw mut STDOUT_LINES, &raw mut STDERR_LINES);
    // SAFETY: `supervise` runs once, in a process with one thread: these are the only
    // references ever made to the two buffers.
    let (out_buf, err_buf) = unsafe { (&mut *out_buf, &mut *err_buf) };
    let mut streams = [
        Lines::new(out_r, Stream::Stdout, out_buf),
        Lines::new(err_r, Stream::Stderr, err_buf),
    ];
    let mut exit = None;
    let mut drain_until: Option<u64> = None;
    let mut ended_at = 0;
    loop {
        if let Some(deadline) = drain_until {
            // The command is gone: stop once its output is drained, or when a descendant
            // keeps the pipes open for longer than a moment.
            if streams.iter().all(|s| !s.open) || sys::now_ms() >= deadline {
                break;
            }
        }
        let mut fds = [
            PollFd {
                fd: sigfd,
                events: sys::POLLIN,
                revents: 0,
            },
            PollFd {
                fd: streams[0].fd,
                events: sys::POLLIN,
                revents: 0,
            },
            PollFd {
                fd: streams[1].fd,
                events: sys::POLLIN,
                revents: 0,
            },
        ];
        for (fd, stream) in fds[1..].iter_mut().zip(&streams) {
            if !stream.open {
                fd.fd = -1;
            }
        }
        let timeout = if drain_until.is_some() { 50 } else { -1 };
        match sys::poll(&mut fds, timeout) {
            Ok(_) | Err(sys::EINTR) => {}
            Err(e) => {
                error.push(b"poll failed: ").errno(e);
                return None;
            }
        }
        if fds[0].revents != 0 {
            while let Some(signal) = sys::next_signal(sigfd) {
                if signal == sys::SIGCHLD {
                    reap(child, &mut exit);
                    if exit.is_some() && drain_until.is_none() {
                        ended_at = sys::now_ms();
                        drain_until = Some(ended_at + 200);
                    }
                } else if exit.is_none() {
                    let _ = sys::kill(child, signal);
                }
            }
        }
        for (fd, stream) in fds[1..].iter().zip(&mut streams) {
            if stream.open && fd.revents != 0 {
                stream.pump(log);
            }
        }
    }
    for stream in &mut streams {
        stream.finish(log);
    }
    exit.map(|ended| (ended, ended_at))
}

/// Reaps every exited process in the container, recording the command's own end.
fn reap(child: i32, exit: &mut Option<sys::Ended>) {
    while let Some((pid, ended)) = sys::reap_any() {
        if pid == child && ended.is_some() {
            *exit = ended;
        }
    }
}

/// Reads until `buf` is full or the end of the file: how many bytes came.
fn read_full(fd: i32, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(sys::EINTR) => {}
            Err(_) => break,
        }
    }
    got
}

/// Runs the command from argument `first` on, found as `execvp` finds it: a name with a `/`
/// as it is, any other in each directory of `PATH` (`/bin:/usr/bin` without one); a file the
/// kernel cannot run (a script without `#!`) is run by `/bin/sh`. Returns only on failure,
/// with the error.
fn exec(args: &Args, first: usize) -> Errno {
    let name = args.get(first).unwrap_or_default();
    if name.contains(&b'/') {
        let mut path = Text::<4097>::new();
        path.push(name).push(b"\0");
        return exec_path(args, first, &path);
    }
    if name.is_empty() {
        return sys::ENOENT;
    }
    let search = env(args, b"PATH").unwrap_or(b"/bin:/usr/bin");
    let mut denied = false;
    for dir in search.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut path = Text::<4097>::new();
        path.push(dir).push(b"/").push(name).push(b"\0");
        if path.as_bytes().len() == 4097 {
            continue;
        }
        match exec_path(args, first, &path) {
            sys::EACCES => denied = true,
            sys::ENOENT | sys::ENOTDIR | sys::ESTALE | sys::ENODEV | sys::ETIMEDOUT => {}
            e => return e,
        }
    }
    if denied {
        sys::EACCES
    } else {
        sys::ENOENT
    }
}

/// Runs `path` (NUL-terminated) with the arguments from `first` on; returns only on failure.
fn exec_path(args: &Args, first: usize, path: &Text<4097>) -> Errno {
    let path = path.as_bytes().as_ptr();
    // SAFETY: a NUL-terminated path; argv and envp are the kernel's arrays.
    let e = unsafe { sys::execve(path, args.from(first), args.envp) };
    if e != sys::ENOEXEC || first < 1 {
        return e;
    }
    // As `execvp`: `/bin/sh PATH ARGS…`, in the slots of the argument before the command
    // (`--`, never read again) and of the command's name.
    const SHELL: &[u8] = b"/bin/sh\0";
    // SAFETY: `first - 1` and `first` are slots of the kernel's argument array, which is
    // writable and lives as long as the process; both hold pointers to NUL-terminated
    // strings (the shell's name, static; the path, alive until the call returns).
    unsafe {
        let slots = args.argv as *mut *const u8;
        *slots.add(first - 1) = SHELL.as_ptr();
        *slots.add(first) = path;
        sys::execve(SHELL.as_ptr(), slots.add(first - 1), args.envp);
    }
    e
}

/// The value of environment variable `key`.
fn env(args: &Args, key: &[u8]) -> Option<&'static [u8]> {
    let mut p = args.envp;
    loop {
        // SAFETY: envp is a NULL-terminated array of NUL-terminated strings.
        let entry = unsafe { *p };
        if entry.is_null() {
            return None;
        }
        // SAFETY: as above.
        let entry = unsafe { c_str(entry) };
        if let Some(value) = entry.strip_prefix(key).and_then(|r| r.strip_prefix(b"=")) {
            return Some(value);
        }
        // SAFETY: not past the terminating NULL, checked above.
        p = unsafe { p.add(1) };
    }
}

/// `enter -- CMD…`: the filter, a process group of its own (so the runtime helper can end it
/// with everything it started; a session leader, as libcontainer makes it, already leads one
/// and this fails harmlessly), then the command.
fn enter(args: &Args) -> i32 {
    let first = (2..args.argc)
        .find(|&i| args.get(i) == Some(b"--"))
        .map_or(args.argc, |i| i + 1);
    if first >= args.argc {
        let _ = sys::write_all(2, b"shg-init enter: no command given after `--`\n");
        return 127;
    }
    if let Err(e) = load_filter() {
        let mut m = Message::new();
        m.push(b"shg-init enter: cannot load the seccomp filter (")
            .errno(e)
            .push(b"); the command was not run\n");
        let _ = sys::write_all(2, m.as_bytes());
        return 126;
    }
    let _ = sys::setpgid_self();
    // The command starts with no signal blocked and SIGPIPE's default action, whatever the
    // runtime left.
    let _ = sys::sigprocmask(0, true);
    let _ = sys::default_action(sys::SIGPIPE);
    let name = args.get(first).unwrap_or_default();
    let e = exec(args, first);
    let mut m = Message::new();
    m.push(b"shg: cannot run ")
        .quoted(name)
        .push(b": ")
        .errno(e)
        .push(b"\n");
    let _ = sys::write_all(2, m.as_bytes());
    if e == sys::ENOENT {
        127
    } else {
        126
    }
}
