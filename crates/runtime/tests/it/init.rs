//! The container init (`runtime::init::BINARY`), run as a real program outside a container:
//! what it writes to the log and the status file, how it reports a command it cannot start,
//! and `enter`. (Inside containers, the e2e suite runs it in every start.)

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use runtime::init::{read_status, ExitStatus};
use runtime::logfile::{read_all, segment_paths, Stream};

/// A directory with the init written into it, and the service's log and status files.
struct Init {
    dir: tempfile::TempDir,
    /// The emulator the init runs under, when it is built for another architecture.
    emulator: Option<&'static str>,
}

impl Init {
    fn new() -> Init {
        let dir = tempfile::tempdir().unwrap();
        runtime::init::install(&dir.path().join("shg-init")).unwrap();
        Init {
            dir,
            emulator: None,
        }
    }

    /// The init built for aarch64 (as for a gateway's ARM processor), run by
    /// `qemu-aarch64-static`. The commands it starts are this machine's own: the emulator
    /// hands an `execve` of an x86_64 program to the kernel.
    ///
    /// The emulator refuses seccomp(2) (it cannot put an aarch64 program into this kernel), so
    /// this build leaves the filter out (`--cfg shg_init_emulated`); the x86_64 tests cover
    /// loading it, and `build.rs` compiles the aarch64 filter in every build.
    fn aarch64() -> Init {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(aarch64_binary(), dir.path().join("shg-init")).unwrap();
        Init {
            dir,
            emulator: Some(QEMU_AARCH64),
        }
    }

    fn binary(&self) -> PathBuf {
        self.dir.path().join("shg-init")
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }

    fn status(&self) -> Option<ExitStatus> {
        read_status(&self.dir.path().join("status"))
    }

    /// `shg-init ARGS…` with the two log segments and the status file at fds 3, 4 and 5, as
    /// `runc run … 3>>log.0 4>>log.1 5>>status` hands them over: for appending only (the
    /// agent's runtime also lets the init read the segments).
    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, false)
    }

    fn run_with(&self, args: &[&str], readable: bool) -> Output {
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .read(readable)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        let files: [File; 3] = [open("log.0"), open("log.1"), open("status")];
        let mut cmd = match self.emulator {
            None => Command::new(self.binary()),
            Some(emulator) => {
                let mut cmd = Command::new(emulator);
                cmd.arg(self.binary());
                cmd
            }
        };
        cmd.args(args).stdin(Stdio::null());
        testdata::hand_over_from_3(&mut cmd, &[&files[0], &files[1], &files[2]]);
        output(&mut cmd)
    }

    /// `sh -c SCRIPT` as uid 65534, gid 65533.
    fn run_as_user(&self, script: &str) -> Output {
        self.run(&[
            "init", "--uid", "65534", "--gid", "65533", "--", "sh", "-c", script,
        ])
    }

    /// The lines the command wrote to its stdout.
    fn stdout_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, t)| t)
            .collect()
    }

    fn lines(&self) -> Vec<(Stream, String)> {
        read_all(self.logs())
            .unwrap()
            .into_iter()
            .map(|l| (l.stream, l.text))
            .collect()
    }
}

/// Runs `cmd` to its end. The init was just written by this process, whose other test
/// threads start programs meanwhile: a child forked while the file was still open for writing
/// holds it until its own exec, and running the init then fails with "Text file busy" for a
/// moment.
fn output(cmd: &mut Command) -> Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result.unwrap(),
        }
    }
    panic!("{cmd:?}: still \"Text file busy\" after a second");
}

#[test]
fn the_init_logs_both_streams_and_records_the_exit_code() {
    logs_both_streams_and_records_the_exit_code(&Init::new());
}

fn logs_both_streams_and_records_the_exit_code(init: &Init) {
    // A longer status of an earlier run: written over, and cut to the new one's length (the
    // file is open for appending here, as under `runc run`).
    std::fs::write(init.logs().join("status"), "x".repeat(500)).unwrap();
    let out = init.run(&[
        "init",
        "--log-segment",
        "4096",
        "--",
        "/bin/sh",
        "-c",
        "echo one; echo two >&2; printf 'no newline'; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let lines = init.lines();
    assert!(lines.contains(&(Stream::Stdout, "one".into())), "{lines:?}");
    assert!(lines.contains(&(Stream::Stderr, "two".into())), "{lines:?}");
    assert!(
        lines.contains(&(Stream::Stdout, "no newline".into())),
        "{lines:?}"
    );
    let status = init.status().expect("a status");
    assert_eq!(
        (status.code, status.signal, &status.error),
        (3, None, &None)
    );
    assert!(status.finished_ms > 1_700_000_000_000, "{status:?}");
}

#[test]
fn a_signal_that_ends_the_command_is_recorded_and_forwarded_ones_reach_it() {
    let init = Init::new();
    a_killed_command_is_recorded_with_its_signal(&init);
    a_term_to_the_init_reaches_the_command(&init);
}

/// The command kills itself: recorded as 128 + the signal.
fn a_killed_command_is_recorded_with_its_signal(init: &Init) {
    let out = init.run(&["init", "--", "/bin/sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let status = init.status().unwrap();
    assert_eq!((status.code, status.signal), (137, Some(9)));
}

/// A SIGTERM sent to the init is passed on to the command, which traps it.
fn a_term_to_the_init_reaches_the_command(init: &Init) {
    let log = init.logs().join("log.0");
    // The init's command line, with the emulator in front when there is one.
    let process = match init.emulator {
        None => format!("^{} init", init.binary().display()),
        Some(emulator) => format!("^{emulator} {} init", init.binary().display()),
    };
    let signaller = std::thread::spawn(move || {
        // Wait for the command to be up (its first line logged), then signal the init.
        for _ in 0..1000 {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pid = Command::new("pgrep")
            .arg("-f")
            .arg(&process)
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
        assert!(!pid.is_empty(), "the init is not running");
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    });
    let out = init.run(&[
        "init",
        "--",
        "/bin/sh",
        "-c",
        "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    signaller.join().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(init.lines().contains(&(Stream::Stdout, "got TERM".into())));
}

#[test]
fn a_command_that_cannot_start_is_explained_in_the_log_and_the_status() {
    let init = Init::new();
    let out = init.run(&["init", "--", "no-such-command-here", "arg"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let status = init.status().unwrap();
    let error = status.error.expect("an error");
    assert_eq!(
        error,
        "cannot start \"no-such-command-here\": No such file or directory (os error 2)"
    );
    assert_eq!(
        init.lines().last().unwrap(),
        &(Stream::Stderr, format!("shg-init: {error}"))
    );

    // A file that is there but may not be run (mode 0644).
    let file = init.logs().join("not-a-program");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let file = file.to_str().unwrap();
    let out = init.run(&["init", "--", file]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_eq!(
        init.status().unwrap().error,
        Some(format!(
            "cannot start \"{file}\": Permission denied (os error 13)"
        ))
    );
}

#[test]
fn the_command_runs_as_the_given_user_under_the_filter_found_on_the_path() {
    let init = Init::new();
    let out = init.run_as_user(
        "id -u; id -g; id -G; grep Seccomp: /proc/self/status; unshare -U true || echo denied",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = init.stdout_lines();
    assert_eq!(
        stdout,
        ["65534", "65533", "65533", "Seccomp:\t2", "denied"],
        "{:?}",
        init.lines()
    );
}

#[test]
fn the_log_keeps_two_segments_and_continues_after_a_restart() {
    let init = Init::new();
    // 3000 numbered lines of about 25 bytes (with the time and the stream) into segments of
    // 4 KiB, with a pause every 100 lines: segments are told apart by the time of their first
    // line, which must then differ (as it does for segments of a MiB).
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); \
                  [ $((i % 100)) = 0 ] && sleep 0.01; done";
    let out = init.run(&[
        "init",
        "--log-segment",
        "4096",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let total: u64 = segment_paths(init.logs())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= 2 * 4096, "the log takes {total} bytes");
    let numbers = |lines: &[(Stream, String)]| -> Vec<u32> {
        lines
            .iter()
            .filter_map(|(_, t)| t.strip_prefix("line ")?.parse().ok())
            .collect()
    };
    let kept = numbers(&init.lines());
    assert_eq!(kept.last(), Some(&2999));
    assert!(kept.len() > 100, "{kept:?}");
    assert!(
        kept.windows(2).all(|w| w[1] == w[0] + 1),
        "lines kept out of order or with gaps: {kept:?}"
    );

    // A second run continues the same two segments, in the order they were written.
    let out = init.run(&["init", "--log-segment", "4096", "--", "/bin/echo", "after"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = init.lines();
    assert_eq!(
        lines.last().unwrap(),
        &(Stream::Stdout, "after".to_string())
    );
    let kept = numbers(&lines);
    assert_eq!(kept.last(), Some(&2999));
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
}

#[test]
fn a_long_line_is_cut_into_pieces_of_16_kib() {
    let init = Init::new();
    let script = "head -c 40000 /dev/zero | tr '\\0' x; echo; echo next";
    let out = init.run(&["init", "--", "/bin/sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = init.lines();
    let lengths: Vec<usize> = lines.iter().map(|(_, t)| t.len()).collect();
    assert_eq!(lengths, [16384, 16384, 40000 - 2 * 16384, 4], "{lengths:?}");
    assert!(lines[..3].iter().all(|(_, t)| t.bytes().all(|b| b == b'x')));
}

#[test]
fn enter_runs_the_command_under_the_filter_and_says_what_it_cannot_run() {
    let init = Init::new();
    let out = output(Command::new(init.binary()).args([
        "enter",
        "--",
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status",
    ]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Seccomp:\t2\n");

    let out = output(Command::new(init.binary()).args(["enter", "--", "no-such-command-here"]));
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "shg: cannot run \"no-such-command-here\": No such file or directory (os error 2)\n"
    );
}

#[test]
fn misuse_is_refused_with_a_reason() {
    let init = Init::new();
    let run = |args: &[&str]| {
        let out = output(Command::new(init.binary()).args(args));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["bogus"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown verb \"bogus\""), "{err}");
    let (code, err) = run(&["init", "--uid", "5"]);
    assert_eq!(code, Some(127));
    assert!(err.contains("no command given after `--`"), "{err}");
    // Without the log and status descriptors.
    let (code, err) = run(&["init", "--", "/bin/true"]);
    assert_eq!(code, Some(125));
    assert!(err.contains("descriptor 3 is not open"), "{err}");
}

#[test]
fn install_writes_the_init_once_and_replaces_a_different_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shg-init");
    std::fs::write(&path, b"an older init").unwrap();
    runtime::init::install(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), runtime::init::BINARY);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    // The same content again: the file is left as it is (a running container binds it).
    runtime::init::install(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), meta.ino());
}

#[test]
fn segments_written_within_one_clock_tick_are_told_apart_by_their_first_lines() {
    let init = Init::new();
    // Two full segments with the same modification time: log.1 begun later than log.0.
    let [zero, one] = segment_paths(init.logs());
    std::fs::write(&zero, "1000 o older\n".repeat(300)).unwrap();
    std::fs::write(&one, "2000 o newer\n".repeat(200)).unwrap();
    let when = std::time::SystemTime::now();
    for path in [&zero, &one] {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.set_times(std::fs::FileTimes::new().set_modified(when))
            .unwrap();
    }
    let out = init.run_with(&["init", "--", "/bin/echo", "next"], true);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The new line continues log.1, the segment begun last; log.0 is untouched.
    assert!(std::fs::read_to_string(&one)
        .unwrap()
        .ends_with(" o next\n"));
    assert_eq!(
        std::fs::read_to_string(&zero).unwrap(),
        "1000 o older\n".repeat(300)
    );
}

#[test]
fn the_command_gets_sigpipe_back_and_a_script_without_an_interpreter_line_runs_in_sh() {
    let init = Init::new();
    // The test's own process ignores SIGPIPE (Rust programs do), and an ignored signal stays
    // ignored across exec: the init gives the command the default action back, so a writer
    // into a closed pipe dies of it rather than complaining.
    let out = init.run(&[
        "init",
        "--",
        "/bin/sh",
        "-c",
        "yes | head -n 1; grep SigIgn /proc/self/status",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = init.lines();
    assert!(lines.contains(&(Stream::Stdout, "y".into())), "{lines:?}");
    assert!(
        !lines.iter().any(|(_, t)| t.contains("Broken pipe")),
        "{lines:?}"
    );
    let ignored = lines
        .iter()
        .find_map(|(_, t)| t.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .expect("the command's ignored signals");
    assert_eq!(ignored & (1 << 12), 0, "SIGPIPE still ignored: {ignored:x}");

    // A file the kernel cannot run (no `#!`) runs in /bin/sh, as execvp does.
    // Written by a shell, not by this process: a child another test thread forks while this
    // process holds the file open for writing would keep it so until its own exec, and the
    // init's exec of the script would then fail with "Text file busy".
    let script = init.logs().join("plain-script");
    let written = Command::new("sh")
        .args([
            "-c",
            "printf '%s\\n' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
        ])
        .arg("echo from a plain script \"$1\"")
        .arg(&script)
        .status()
        .unwrap();
    assert!(written.success());
    let out = init.run(&["init", "--", script.to_str().unwrap(), "arg"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        init.lines().last().unwrap(),
        &(Stream::Stdout, "from a plain script arg".to_string())
    );
}

#[test]
fn an_error_naming_a_command_of_odd_bytes_still_makes_a_valid_status() {
    let init = Init::new();
    // A name of quotes and backslashes, each escaped twice over (as Rust shows a string,
    // then in JSON): the status must still be whole.
    let name = "\\\"".repeat(400);
    let out = init.run(&["init", "--", &name]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let status = init.status().expect("a status that parses");
    let error = status.error.expect("an error");
    assert!(error.starts_with("cannot start \""), "{error}");
}

// --- the init built for aarch64 -------------------------------------------------------------

#[allow(dead_code)]
#[path = "../../build/init.rs"]
mod build_init;

const QEMU_AARCH64: &str = "qemu-aarch64-static";

/// `init/main.rs` compiled for aarch64, once for all tests, the way `build.rs` compiles it for
/// this machine.
fn aarch64_binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        assert!(
            Command::new(QEMU_AARCH64).arg("--version").output().is_ok(),
            "{QEMU_AARCH64} is missing: apt-get install qemu-user-static (scripts/test-tools.sh does)"
        );
        // Under target/, built beside and renamed, so a test run in another process never
        // runs half a file.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let partial = dir.join(format!("shg-init-aarch64.{}", std::process::id()));
        build_init::compile(
            "rustc",
            "aarch64-unknown-linux-gnu",
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/init/main.rs")),
            Path::new(concat!(env!("OUT_DIR"), "/seccomp-aarch64.bpf")),
            &partial,
            &["shg_init_emulated"],
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}; without the aarch64 target, install it with `rustup target add \
                 aarch64-unknown-linux-gnu` (scripts/test-tools.sh does)"
            )
        });
        let binary = dir.join("shg-init-aarch64");
        std::fs::rename(&partial, &binary).unwrap();
        binary
    })
}

#[test]
fn the_aarch64_init_is_an_arm_program() {
    let bytes = std::fs::read(aarch64_binary()).unwrap();
    // ELF, 64-bit, little-endian; e_machine 183 is EM_AARCH64.
    assert_eq!(&bytes[..6], b"\x7fELF\x02\x01");
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 183);
    assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
}

#[test]
fn on_aarch64_the_init_logs_both_streams_and_records_the_exit() {
    let init = Init::aarch64();
    logs_both_streams_and_records_the_exit_code(&init);
    a_killed_command_is_recorded_with_its_signal(&init);
}

#[test]
fn on_aarch64_the_init_runs_the_command_as_the_user_and_explains_a_failed_start() {
    let init = Init::aarch64();
    let out = init.run_as_user("id -u; id -g; id -G; trap - PIPE; kill -PIPE $$");
    // SIGPIPE has its default action back: it ends the shell.
    assert_eq!(out.status.code(), Some(128 + 13), "{out:?}");
    let stdout = init.stdout_lines();
    assert_eq!(stdout, ["65534", "65533", "65533"], "{:?}", init.lines());

    let out = init.run(&["init", "--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_eq!(
        init.status().unwrap().error.as_deref(),
        Some("cannot start \"no-such-command-here\": No such file or directory (os error 2)")
    );

    // `enter` becomes the command.
    let out = init.run(&["enter", "--", "/bin/sh", "-c", "echo entered; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "entered\n");
}

#[test]
fn on_aarch64_a_signal_to_the_init_reaches_the_command() {
    a_term_to_the_init_reaches_the_command(&Init::aarch64());
}
