//! The Linux system calls the init makes, without a C library, on x86_64 and aarch64.
//!
//! Only calls both architectures have are used (`openat`, `pipe2`, `dup3`, `ppoll`, `clone`),
//! so the code above the numbers and the instruction is the same for both; another
//! architecture needs its numbers in a module like [`nr`] and its `syscall`.

use core::arch::asm;

/// A failed call: the kernel's error number.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub const ENOENT: Errno = Errno(2);
pub const EINTR: Errno = Errno(4);
pub const EACCES: Errno = Errno(13);
pub const ENOTDIR: Errno = Errno(20);
pub const ENOEXEC: Errno = Errno(8);
pub const ENODEV: Errno = Errno(19);
pub const ETIMEDOUT: Errno = Errno(110);
pub const ESTALE: Errno = Errno(116);

pub type Result<T> = core::result::Result<T, Errno>;

/// System call numbers (`arch/x86/entry/syscalls/syscall_64.tbl`).
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const FSTAT: usize = 5;
    pub const LSEEK: usize = 8;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const PREAD64: usize = 17;
    pub const PWRITE64: usize = 18;
    pub const WRITEV: usize = 20;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const FCNTL: usize = 72;
    pub const FTRUNCATE: usize = 77;
    pub const SETUID: usize = 105;
    pub const SETGID: usize = 106;
    pub const SETPGID: usize = 109;
    pub const SETGROUPS: usize = 116;
    pub const PRCTL: usize = 157;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const PPOLL: usize = 271;
    pub const SIGNALFD4: usize = 289;
    pub const DUP3: usize = 292;
    pub const PIPE2: usize = 293;
    pub const SECCOMP: usize = 317;
    pub const CLOSE_RANGE: usize = 436;
}

/// System call numbers (`include/uapi/asm-generic/unistd.h`).
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const DUP3: usize = 24;
    pub const FCNTL: usize = 25;
    pub const FTRUNCATE: usize = 46;
    pub const OPENAT: usize = 56;
    pub const CLOSE: usize = 57;
    pub const PIPE2: usize = 59;
    pub const LSEEK: usize = 62;
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const WRITEV: usize = 66;
    pub const PREAD64: usize = 67;
    pub const PWRITE64: usize = 68;
    pub const PPOLL: usize = 73;
    pub const SIGNALFD4: usize = 74;
    pub const FSTAT: usize = 80;
    pub const EXIT_GROUP: usize = 94;
    pub const CLOCK_GETTIME: usize = 113;
    pub const KILL: usize = 129;
    pub const RT_SIGACTION: usize = 134;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const SETGID: usize = 144;
    pub const SETUID: usize = 146;
    pub const SETPGID: usize = 154;
    pub const SETGROUPS: usize = 159;
    pub const PRCTL: usize = 167;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const WAIT4: usize = 260;
    pub const SECCOMP: usize = 277;
    pub const CLOSE_RANGE: usize = 436;
}

use nr::*;

/// # Safety
/// The arguments must be what system call `n` takes: pointers valid for what it reads or
/// writes through them.
#[cfg(target_arch = "x86_64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 and nothing else of ours; the
    // caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, in("r8") e, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret
}

/// # Safety
/// As for the x86_64 `syscall`.
#[cfg(target_arch = "aarch64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    // SAFETY: `svc 0` takes the number in x8 and the arguments in x0-x4, returns in x0 and
    // clobbers nothing else; the caller vouches for the arguments.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b, in("x2") c,
             in("x3") d, in("x4") e, options(nostack));
    }
    ret
}

fn check(ret: isize) -> Result<usize> {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    check(unsafe {
        syscall(
            READ,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
        )
    })
}

/// Reads at `offset`, leaving the file's position where it was.
pub fn pread(fd: i32, buf: &mut [u8], offset: u64) -> Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    check(unsafe {
        syscall(
            PREAD64,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            offset as usize,
            0,
        )
    })
}

pub fn write(fd: i32, buf: &[u8]) -> Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    check(unsafe { syscall(WRITE, fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0) })
}

pub fn close(fd: i32) {
    // SAFETY: no pointers; the caller gives up the descriptor.
    unsafe { syscall(CLOSE, fd as usize, 0, 0, 0, 0) };
}

/// Writes all of `buf`, however many calls it takes.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(0) => return Err(Errno(5)),
            Ok(n) => buf = &buf[n..],
            Err(EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` at the start of the file.
pub fn pwrite_all(fd: i32, buf: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: the kernel reads at most `rest.len()` bytes from `rest`.
        let n = check(unsafe {
            syscall(
                PWRITE64,
                fd as usize,
                rest.as_ptr() as usize,
                rest.len(),
                done,
                0,
            )
        });
        match n {
            Ok(0) => return Err(Errno(5)),
            Ok(n) => done += n,
            Err(EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `struct iovec`.
#[repr(C)]
pub struct IoVec {
    base: *const u8,
    len: usize,
}

impl IoVec {
    pub fn new(bytes: &[u8]) -> IoVec {
        IoVec {
            base: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

/// One `writev`: the parts of a log line land in the file together.
pub fn writev(fd: i32, parts: &[IoVec]) -> Result<usize> {
    // SAFETY: every `IoVec` was made from a slice that outlives the call.
    check(unsafe {
        syscall(
            WRITEV,
            fd as usize,
            parts.as_ptr() as usize,
            parts.len(),
            0,
            0,
        )
    })
}

/// The modification time of an open file (`struct stat`'s `st_mtim`), in nanoseconds.
pub fn mtime_ns(fd: i32) -> Result<u128> {
    // `struct stat` is 144 bytes on x86_64 and 128 on aarch64; on both, `st_mtim` (seconds,
    // nanoseconds) is at byte 88.
    let mut stat = [0u64; 18];
    // SAFETY: `stat` is as large as the kernel's `struct stat` here.
    check(unsafe { syscall(FSTAT, fd as usize, stat.as_mut_ptr() as usize, 0, 0, 0) })?;
    Ok(stat[11] as u128 * 1_000_000_000 + stat[12] as u128)
}

/// Marks every descriptor from `first` on close-on-exec.
pub fn cloexec_from(first: i32) -> Result<()> {
    const CLOSE_RANGE_CLOEXEC: usize = 1 << 2;
    // SAFETY: no pointers.
    check(unsafe {
        syscall(
            CLOSE_RANGE,
            first as usize,
            u32::MAX as usize,
            CLOSE_RANGE_CLOEXEC,
            0,
            0,
        )
    })
    .map(drop)
}

pub const SEEK_SET: usize = 0;
pub const SEEK_END: usize = 2;

pub fn lseek(fd: i32, offset: u64, whence: usize) -> Result<u64> {
    // SAFETY: no pointers.
    check(unsafe { syscall(LSEEK, fd as usize, offset as usize, whence, 0, 0) }).map(|n| n as u64)
}

pub fn ftruncate(fd: i32, len: u64) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { syscall(FTRUNCATE, fd as usize, len as usize, 0, 0, 0) }).map(drop)
}

pub const F_GETFD: usize = 1;
pub const F_SETFD: usize = 2;
pub const F_GETFL: usize = 3;
pub const F_SETFL: usize = 4;
pub const FD_CLOEXEC: usize = 1;
pub const O_APPEND: usize = 0o2000;

pub fn fcntl(fd: i32, cmd: usize, arg: usize) -> Result<usize> {
    // SAFETY: only the integer commands above are used.
    check(unsafe { syscall(FCNTL, fd as usize, cmd, arg, 0, 0) })
}

/// Makes `new` a copy of `old`, inherited across exec (`dup2`, with `dup3`, which aarch64
/// has instead: when the two are the same descriptor, only its close-on-exec is cleared).
pub fn dup2(old: i32, new: i32) -> Result<()> {
    if old == new {
        return fcntl(old, F_SETFD, 0).map(drop);
    }
    // SAFETY: no pointers.
    check(unsafe { syscall(DUP3, old as usize, new as usize, 0, 0, 0) }).map(drop)
}

pub const O_RDONLY: usize = 0;
pub const O_CLOEXEC: usize = 0o2_000_000;
const O_NONBLOCK: usize = 0o4000;
const AT_FDCWD: isize = -100;

/// Opens `path` (NUL-terminated).
pub fn open(path: &[u8], flags: usize) -> Result<i32> {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is a NUL-terminated string.
    check(unsafe {
        syscall(
            OPENAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags,
            0,
            0,
        )
    })
    .map(|fd| fd as i32)
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: the kernel writes two descriptors into `fds`.
    check(unsafe { syscall(PIPE2, fds.as_mut_ptr() as usize, O_CLOEXEC, 0, 0, 0) })?;
    Ok((fds[0], fds[1]))
}

/// A signal set as the kernel takes it (64 signals, bit `n - 1` for signal `n`).
pub type SigSet = u64;

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGQUIT: i32 = 3;
pub const SIGUSR1: i32 = 10;
pub const SIGUSR2: i32 = 12;
pub const SIGPIPE: i32 = 13;
pub const SIGTERM: i32 = 15;
pub const SIGCHLD: i32 = 17;
pub const SIGWINCH: i32 = 28;

pub fn sigset(signals: &[i32]) -> SigSet {
    signals.iter().fold(0, |set, s| set | 1 << (s - 1))
}

const SIG_BLOCK: usize = 0;
const SIG_SETMASK: usize = 2;

/// Blocks `set` (`unblock_all`: sets the mask to nothing instead).
pub fn sigprocmask(set: SigSet, unblock_all: bool) -> Result<()> {
    let (how, set) = if unblock_all {
        (SIG_SETMASK, 0)
    } else {
        (SIG_BLOCK, set)
    };
    // SAFETY: `set` is a kernel signal set of 8 bytes, read by the kernel during the call.
    check(unsafe { syscall(RT_SIGPROCMASK, how, &set as *const u64 as usize, 0, 8, 0) }).map(drop)
}

/// Gives `signal` its default action back (what a command expects of SIGPIPE, which the
/// runtime's own program may have ignored; an ignored signal stays ignored across exec).
pub fn default_action(signal: i32) -> Result<()> {
    // `struct sigaction` as the kernel takes it: handler (0: SIG_DFL), flags, restorer, mask.
    let action = [0usize; 4];
    // SAFETY: the kernel reads the 32 bytes of `action` during the call; no old action asked.
    check(unsafe {
        syscall(
            RT_SIGACTION,
            signal as usize,
            action.as_ptr() as usize,
            0,
            8,
            0,
        )
    })
    .map(drop)
}

/// A non-blocking, close-on-exec signalfd for `set`.
pub fn signalfd(set: SigSet) -> Result<i32> {
    // SAFETY: as for `sigprocmask`.
    check(unsafe {
        syscall(
            SIGNALFD4,
            usize::MAX,
            &set as *const u64 as usize,
            8,
            O_CLOEXEC | O_NONBLOCK,
            0,
        )
    })
    .map(|fd| fd as i32)
}

/// Reads the next pending signal's number from a signalfd, if one is pending.
pub fn next_signal(fd: i32) -> Option<i32> {
    // `struct signalfd_siginfo` is 128 bytes; `ssi_signo` is its first field.
    let mut info = [0u32; 32];
    // SAFETY: `info` is 128 bytes, the size the kernel writes.
    let n = check(unsafe { syscall(READ, fd as usize, info.as_mut_ptr() as usize, 128, 0, 0) });
    match n {
        Ok(128) => Some(info[0] as i32),
        _ => None,
    }
}

pub fn kill(pid: i32, signal: i32) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { syscall(KILL, pid as usize, signal as usize, 0, 0, 0) }).map(drop)
}

/// `struct pollfd`.
#[repr(C)]
pub struct PollFd {
    pub fd: i32,
    pub events: i16,
    pub revents: i16,
}

pub const POLLIN: i16 = 1;

/// Waits for any of `fds`, at most `timeout_ms` (negative: forever).
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> Result<usize> {
    // `struct timespec`: seconds, nanoseconds; no timeout at all is a null pointer.
    let timeout = [
        (timeout_ms / 1000) as i64,
        (timeout_ms % 1000) as i64 * 1_000_000,
    ];
    let timeout_ptr = if timeout_ms < 0 {
        0
    } else {
        timeout.as_ptr() as usize
    };
    // SAFETY: the kernel reads and writes `fds.len()` entries of `fds` and reads `timeout`,
    // which outlives the call; no signal mask is given.
    check(unsafe {
        syscall(
            PPOLL,
            fds.as_mut_ptr() as usize,
            fds.len(),
            timeout_ptr,
            0,
            8,
        )
    })
}

/// How a reaped process ended.
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Reaps one exited child of any kind, without waiting: its pid and how it ended.
pub fn reap_any() -> Option<(i32, Option<Ended>)> {
    let mut status = 0i32;
    const WNOHANG: usize = 1;
    // SAFETY: the kernel writes the status into `status`; no rusage is asked for.
    let pid = check(unsafe {
        syscall(
            WAIT4,
            usize::MAX,
            &mut status as *mut i32 as usize,
            WNOHANG,
            0,
            0,
        )
    });
    match pid {
        Ok(0) | Err(_) => None,
        Ok(pid) => {
            let ended = match status & 0x7f {
                0 => Some(Ended::Exited((status >> 8) & 0xff)),
                0x7f => None,
                signal => Some(Ended::Signaled(signal)),
            };
            Some((pid as i32, ended))
        }
    }
}

/// `fork`: 0 in the child, the child's pid in the parent.
pub fn fork() -> Result<i32> {
    // SAFETY: clone with only the exit signal is fork; the child gets a copy of this process,
    // which has one thread and no locks.
    check(unsafe { syscall(CLONE, SIGCHLD as usize, 0, 0, 0, 0) }).map(|pid| pid as i32)
}

/// Replaces this process; returns only on failure.
///
/// # Safety
/// `path` is NUL-terminated; `argv` and `envp` are NULL-terminated arrays of NUL-terminated
/// strings.
pub unsafe fn execve(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> Errno {
    // SAFETY: the caller vouches for the three arrays.
    let ret = unsafe { syscall(EXECVE, path as usize, argv as usize, envp as usize, 0, 0) };
    check(ret).err().unwrap_or(Errno(0))
}

pub fn exit(code: i32) -> ! {
    // SAFETY: no pointers; the call does not return.
    unsafe { syscall(EXIT_GROUP, code as usize, 0, 0, 0, 0) };
    unreachable!()
}

/// Drops every supplementary group, then takes `gid` and `uid`.
pub fn become_user(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: setgroups with a count of 0 reads no list; the others take integers.
    unsafe {
        check(syscall(SETGROUPS, 0, 0, 0, 0, 0))?;
        check(syscall(SETGID, gid as usize, 0, 0, 0, 0))?;
        check(syscall(SETUID, uid as usize, 0, 0, 0, 0))?;
    }
    Ok(())
}

/// Makes this process the leader of a process group of its own.
pub fn setpgid_self() -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { syscall(SETPGID, 0, 0, 0, 0, 0) }).map(drop)
}

pub const PR_SET_DUMPABLE: usize = 4;
pub const PR_GET_SECCOMP: usize = 21;

pub fn prctl(option: usize, arg: usize) -> Result<usize> {
    // SAFETY: only the integer options above are used.
    check(unsafe { syscall(PRCTL, option, arg, 0, 0, 0) })
}

/// `struct sock_filter`.
#[repr(C)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Puts this process under the filter `program`.
pub fn seccomp_filter(program: &[SockFilter]) -> Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    let prog = SockFprog {
        len: program.len() as u16,
        filter: program.as_ptr(),
    };
    const SECCOMP_SET_MODE_FILTER: usize = 1;
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    check(unsafe {
        syscall(
            SECCOMP,
            SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const SockFprog as usize,
            0,
            0,
        )
    })
    .map(drop)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let mut ts = [0i64; 2];
    const CLOCK_REALTIME: usize = 0;
    // SAFETY: the kernel writes a `struct timespec` (two 64-bit fields) into `ts`.
    match check(unsafe {
        syscall(
            CLOCK_GETTIME,
            CLOCK_REALTIME,
            ts.as_mut_ptr() as usize,
            0,
            0,
            0,
        )
    }) {
        Ok(_) => ts[0] as u64 * 1000 + ts[1] as u64 / 1_000_000,
        Err(_) => 0,
    }
}

/// The C library's text for an error number, for the errors a start can meet.
pub fn describe(e: Errno) -> &'static str {
    match e.0 {
        1 => "Operation not permitted",
        2 => "No such file or directory",
        5 => "Input/output error",
        7 => "Argument list too long",
        8 => "Exec format error",
        9 => "Bad file descriptor",
        11 => "Resource temporarily unavailable",
        12 => "Cannot allocate memory",
        13 => "Permission denied",
        14 => "Bad address",
        19 => "No such device",
        20 => "Not a directory",
        21 => "Is a directory",
        22 => "Invalid argument",
        23 => "Too many open files in system",
        24 => "Too many open files",
        26 => "Text file busy",
        36 => "File name too long",
        38 => "Function not implemented",
        40 => "Too many levels of symbolic links",
        80 => "Accessing a corrupted shared library",
        110 => "Connection timed out",
        116 => "Stale file handle",
        _ => "Unknown error",
    }
}
