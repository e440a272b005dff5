//! The `shg` binary as a user runs it, for everything that needs no running agent.

use std::path::Path;
use std::process::{Command, Output};

fn shg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shg"))
        .args(args)
        .env_remove("SHG_GATEWAY")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run shg")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A package source directory: the given manifest and a rootfs with one program.
fn service_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shg-service.toml"), manifest).unwrap();
    let bin = dir.path().join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("hello"), "#!/bin/sh\necho hello\n").unwrap();
    dir
}

const MANIFEST: &str = r#"
name = "hello"
version = "1.0.0"
provider = "acme"
description = "says hello"

[run]
command = ["/bin/hello"]
"#;

#[test]
fn help_lists_every_command() {
    let out = shg(&["--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    for command in [
        "pack",
        "gateway",
        "install",
        "ps",
        "logs",
        "inspect",
        "exec",
        "stop",
        "start",
        "restart",
        "remove",
        "events",
        "demo",
        "stats",
        "capacity",
        "priority",
        "token",
        "audit",
        "completions",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`{command}` missing from shg --help:\n{help}"
        );
    }
    assert!(help.contains("--gateway <PATH|URL>"), "{help}");
    assert!(help.contains("SHG_GATEWAY"), "{help}");
    assert!(help.contains("SHG_TOKEN"), "{help}");
}

#[test]
fn gateway_help_lists_run() {
    let out = shg(&["gateway", "--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("run ")),
        "{help}"
    );
}

/// The digest at the end of `packed NAME VERSION → FILE (sha256:…)`.
fn packed_digest(out: &Output, file: &Path) -> String {
    assert!(out.status.success(), "shg pack failed: {}", stderr(out));
    let line = stdout(out);
    let prefix = format!("packed hello 1.0.0 → {} (", file.display());
    let digest = line
        .trim_end()
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected pack output: {line:?}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    digest.to_string()
}

#[test]
fn pack_twice_gives_the_same_digest() {
    let src = service_dir(MANIFEST);
    let out_dir = tempfile::tempdir().unwrap();
    let first = out_dir.path().join("a.tar");
    let second = out_dir.path().join("b.tar");
    let src_arg = src.path().to_str().unwrap();
    let a = packed_digest(
        &shg(&["pack", src_arg, "-o", first.to_str().unwrap()]),
        &first,
    );
    let b = packed_digest(
        &shg(&["pack", src_arg, "--output", second.to_str().unwrap()]),
        &second,
    );
    assert_eq!(a, b);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
}

#[test]
fn pack_with_a_bad_manifest_names_the_field() {
    let src = service_dir(&MANIFEST.replace("/bin/hello", "bin/hello"));
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("p.tar");
    let out = shg(&[
        "pack",
        src.path().to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: cannot pack "), "{err}");
    assert!(err.contains("run.command"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        !file.exists(),
        "a package was written despite the bad manifest"
    );
}

#[test]
fn pack_without_a_manifest_says_what_a_package_needs() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("p.tar");
    let out = shg(&[
        "pack",
        src.path().to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("shg-service.toml not found"), "{err}");
    assert!(err.contains("rootfs/"), "{err}");
}

#[test]
fn ps_without_an_agent_says_how_to_reach_one() {
    let out = shg(&["ps", "--gateway", "/nonexistent.sock"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot reach the gateway at /nonexistent.sock: "),
        "{err}"
    );
    assert!(
        err.contains("shg gateway run") && err.contains("SHG_GATEWAY"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn gateway_comes_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_shg"))
        .args(["events"])
        .env("SHG_GATEWAY", "/nonexistent-env.sock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the gateway at /nonexistent-env.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plain_http_gateways_are_refused_clearly() {
    let out = shg(&["ps", "--gateway", "http://gw.example:8443"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("plain HTTP would send the token in the clear"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_https_gateway_is_named() {
    // Port 1 on loopback: nothing listens there.
    let out = shg(&["ps", "--gateway", "https://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the gateway at https://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_are_printed_for_bash() {
    let out = shg(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(script.contains("_shg()"), "{script}");
    assert!(script.contains("install"), "{script}");
}

#[test]
fn exec_wants_the_command_after_a_double_dash() {
    let out = shg(&["exec", "web", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("-- <CMD>..."), "{}", stderr(&out));
}

/// `shg-runtime serve`, the agent's fork server: one answer per request, in order, from a
/// child forked ahead of the request; a spare child killed while it waits costs no request.
#[test]
fn the_runtime_helper_serves_each_request_from_a_spare_child() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut server = Command::new(env!("CARGO_BIN_EXE_shg-runtime"))
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run shg-runtime serve");
    let pid = server.id();
    let mut requests = server.stdin.take().unwrap();
    let mut answers = BufReader::new(server.stdout.take().unwrap());
    let mut ask = |request: &[u8]| {
        requests.write_all(request).unwrap();
        requests.flush().unwrap();
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        line
    };
    // The spare forked while the server waits: its only child, and a new one after each
    // request (the child that served the last one may still be ending when the answer comes).
    let mut seen = Vec::new();
    let mut spare = || {
        for _ in 0..1000 {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            let children: Vec<i32> = children
                .split_whitespace()
                .map(|c| c.parse().unwrap())
                .collect();
            if let [one] = children[..] {
                if !seen.contains(&one) {
                    seen.push(one);
                    return one;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("shg-runtime serve forks no new spare child");
    };
    let state = |child: i32| {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim().chars().next())
            })
            .flatten()
    };

    // Each request is served by the spare forked before it, and a new spare follows.
    spare();
    assert_eq!(ask(b"nope\n"), "!`nope` is not served (only `create`)\n");
    spare();
    assert_eq!(
        ask(b"nope\0again\n"),
        "!`nope` is not served (only `create`)\n"
    );
    let third = spare();
    // SAFETY: kill with a PID this test just read from the server's children.
    unsafe { libc::kill(third, libc::SIGKILL) };
    // Dead (a zombie until the server reaps it) before the next request is sent.
    for _ in 0..1000 {
        if state(third) == Some('Z') {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        state(third),
        Some('Z'),
        "the killed spare {third} did not die"
    );
    assert_eq!(
        ask(b"create\n"),
        "!shg-runtime create: missing container name\n"
    );
    assert_eq!(ask(b"\xff\n"), "!the request is not UTF-8\n");

    let last = spare();
    drop(requests);
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "the server ends when its input does: {status}"
    );
    assert!(
        !Path::new(&format!("/proc/{last}")).exists(),
        "the spare child {last} outlived its server"
    );
}

#[test]
fn the_runtime_helper_keeps_the_services_mounts_out_of_its_mount_table() {
    use std::process::Stdio;
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let services = dir.path().join("services");
    let (before, after) = (services.join("old/rootfs"), services.join("new/rootfs"));
    for d in [&before, &after] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mount = |target: &Path| {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", target.display());
    };
    let mounted_in = |pid: u32, target: &Path| {
        let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let found = runtime::volume::mount_points(&table).any(|p| p == target);
        found
    };
    // A service's root mounted before the helper starts (an agent restarted beside running
    // services), and one mounted after (a service installed since).
    mount(&before);
    // Named through a link, as a state directory may be: the table shows resolved paths.
    let link = dir.path().join("services-link");
    std::os::unix::fs::symlink(&services, &link).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_shg-runtime"))
        .args(["serve", "--services"])
        .arg(&link)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run shg-runtime serve");
    let pid = server.id();
    let mut spare = None;
    for _ in 0..1000 {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        spare = children
            .split_whitespace()
            .next()
            .map(|c| c.parse::<u32>().unwrap());
        if spare.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let spare = spare.expect("shg-runtime serve forks a spare child");
    mount(&after);

    let host = std::process::id();
    let seen = [
        (
            "the host",
            mounted_in(host, &before),
            mounted_in(host, &after),
        ),
        (
            "the server",
            mounted_in(pid, &before),
            mounted_in(pid, &after),
        ),
        (
            "its spare child",
            mounted_in(spare, &before),
            mounted_in(spare, &after),
        ),
    ];
    drop(server.stdin.take());
    let _ = server.wait();
    for target in [&before, &after] {
        let _ = Command::new("umount").arg(target).status();
    }
    // The host keeps both: the server's detaching happened in its own table only. The
    // attaching of a service's directory at each create is what every start of the e2e
    // tests goes through (their services are installed after the agent's helper started).
    assert_eq!(
        seen,
        [
            ("the host", true, true),
            ("the server", false, false),
            ("its spare child", false, false),
        ]
    );
}
