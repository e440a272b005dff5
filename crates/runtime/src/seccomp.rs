//! The seccomp filter every service runs under, default-deny: the rules in
//! [`rules`](crate::seccomp::rules), compiled into a BPF program when the crate is built
//! (`build.rs`). The agent's runtime loads it right before it execs `shg-init`, both as a
//! container's PID 1 and in every process `shg exec` starts; `shg-init` loads it as its first
//! act when no filter is in force (another runtime, `runc run` of the bundle).
//!
//! Why not the OCI config's `linux.seccomp`: libcontainer compiled those rules with libseccomp
//! at every start (a few milliseconds of each), and it reads `SCMP_CMP_MASKED_EQ` with the mask
//! and the value swapped, so its `clone` rule let a service create namespaces (a user
//! namespace needs no capability). runc read the same rule right. The bundle therefore carries
//! no `linux.seccomp`, and runc running it (README, Containers) gets the filter from the same
//! init.

use std::io;

#[path = "seccomp_rules.rs"]
pub mod rules;

/// The compiled program: `struct sock_filter` entries of 8 bytes, in the target's byte order.
static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp.bpf"));

/// The compiled program as the kernel takes it.
fn program() -> Vec<libc::sock_filter> {
    PROGRAM
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect()
}

/// Puts this thread (and everything it starts) under the filter. The thread must have
/// no_new_privs set, as the runtime does for every container process (`noNewPrivileges`).
pub fn load() -> io::Result<()> {
    install(&mut program())
}

/// [`load`], unless a filter is in force already: the agent's runtime loads this one before
/// it execs the init (`container::FilteredExecutor`), and the filter denies `seccomp(2)`, so
/// a second load would fail. Under another runtime (`runc run` of the bundle) nothing is
/// loaded before the init, and the init loads it here.
pub fn load_unless_filtered() -> io::Result<()> {
    // SAFETY: PR_GET_SECCOMP takes no pointer; it returns the mode, 2 for filters.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } == libc::SECCOMP_MODE_FILTER as i32
    {
        return Ok(());
    }
    load()
}

/// Installs `program` without allocating, so a test may call it between fork and exit.
fn install(program: &mut [libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::other("the seccomp program is longer than the kernel takes"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::rules::ALLOWED;
    use super::*;

    #[test]
    fn dangerous_calls_are_not_allowed() {
        for call in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "ptrace",
            "bpf",
            "perf_event_open",
            "init_module",
            "kexec_load",
            "pivot_root",
            "chroot",
            "reboot",
            "swapon",
            "open_by_handle_at",
            "userfaultfd",
        ] {
            assert!(!ALLOWED.contains(&call), "{call} must stay denied");
        }
    }

    #[test]
    fn allowlist_has_no_duplicates() {
        let mut names = ALLOWED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALLOWED.len());
    }

    /// Runs `checks` in a forked child under the filter and returns its exit code: 0 when
    /// every check held, else the number of the first that did not (100: no filter).
    fn under_filter(checks: fn() -> i32) -> i32 {
        let mut program = program();
        // SAFETY: the child only makes system calls and exits; it allocates nothing (the
        // program is built before the fork).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain integer arguments; then only raw system calls and _exit.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let code = match install(&mut program) {
                    Ok(()) => checks(),
                    Err(_) => 100,
                };
                libc::_exit(code)
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status),
            "the child died: status {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }

    /// The errno of a raw system call's result, 0 if it worked; a child it created exits at
    /// once.
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == 0 {
            // SAFETY: `rc == 0` only in the child of a clone that worked.
            unsafe { libc::_exit(0) }
        }
        if rc > 0 {
            return 0;
        }
        // SAFETY: reads this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn the_filter_allows_ordinary_calls_and_denies_namespaces() {
        fn checks() -> i32 {
            // SAFETY: raw system calls with integer or null arguments; children exit at once.
            unsafe {
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 1;
                }
                if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS)) != libc::EPERM {
                    return 2;
                }
                // The rule libcontainer read backwards: a user namespace needs no capability.
                let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
                if errno_of(libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0)) != libc::EPERM {
                    return 3;
                }
                let flags = (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_long;
                if errno_of(libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0)) != libc::EPERM {
                    return 4;
                }
                // A plain fork still works.
                let child =
                    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
                if errno_of(child) != 0 {
                    return 5;
                }
                libc::waitpid(child as i32, std::ptr::null_mut(), 0);
                if errno_of(libc::syscall(libc::SYS_clone3, 0, 0)) != libc::ENOSYS {
                    return 6;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffff_u32) < 0 {
                    return 7;
                }
                let no_aslr = libc::ADDR_NO_RANDOMIZE as libc::c_long;
                if errno_of(libc::syscall(libc::SYS_personality, no_aslr)) != libc::EPERM {
                    return 8;
                }
                let target = c"/".as_ptr();
                let mounted = libc::syscall(libc::SYS_mount, target, target, 0, libc::MS_BIND, 0);
                if errno_of(mounted) != libc::EPERM {
                    return 9;
                }
            }
            0
        }
        assert_eq!(
            under_filter(checks),
            0,
            "check number {} failed",
            under_filter(checks)
        );
    }

    #[test]
    fn the_init_under_a_filter_already_loaded_goes_on() {
        fn checks() -> i32 {
            match load_unless_filtered() {
                // seccomp(2) itself is denied, so a second plain load fails.
                Ok(()) if load().is_err() => 0,
                Ok(()) => 1,
                Err(_) => 2,
            }
        }
        assert_eq!(under_filter(checks), 0);
    }

    #[test]
    fn the_program_is_whole_instructions() {
        assert!(!PROGRAM.is_empty());
        assert_eq!(PROGRAM.len() % 8, 0);
        // Every allowed call is one comparison at least.
        assert!(program().len() > ALLOWED.len());
    }
}
