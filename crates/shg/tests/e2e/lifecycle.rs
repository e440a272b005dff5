//! A web service through its whole life with the CLI: install, health, exec, stop, start,
//! restart, inspect, remove.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{alive, Gateway};

const WEB: &str = r#"
name = "web"
version = "1.2.0"
provider = "acme"
description = "serves a page on port 8080"

[run]
command = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
env = { MODE = "prod" }

[resources]
cpu = { reserve = 0.25, limit = 1.0 }
memory = { reserve = "32MiB", limit = "64MiB" }
pids = { limit = 64 }

[[ports]]
port = 8080
publish = "lan"

[health]
http = "http://127.0.0.1:8080/"
interval = "1s"

[restart]
policy = "on-failure"
"#;

const PAGE: &str = "<h1>hello from the e2e web service</h1>\n";

#[test]
fn a_web_service_through_its_whole_life() {
    let mut gw = Gateway::start();
    let installed = gw.install("web", WEB, &[("www/index.html", PAGE.as_bytes(), 0o644)]);
    assert_eq!(
        (installed.provider.as_str(), installed.version.as_str()),
        ("acme", "1.2.0")
    );

    let web = gw.wait_running("web");
    let first = web.pid.unwrap();
    assert!(
        alive(first),
        "ps shows pid {first}, which is not a live process"
    );
    let table = gw.shg_ok(&["ps"]).stdout;
    assert!(
        table.contains("web") && table.contains("running"),
        "`shg ps` does not show web running:\n{table}"
    );

    // The container's init is in the service's own cgroup.
    let cgroups_path = gw.cgroups_path("web");
    let cgroup = gw.pids_cgroup("web");
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .expect("the service's pids cgroup exists");
    assert!(
        procs.lines().any(|l| l.trim() == first.to_string()),
        "pid {first} not in {}: {procs}",
        cgroup.display()
    );

    gw.wait_for("web", "healthy", Duration::from_secs(20), |s| {
        s.health == "healthy"
    });

    let page = gw.shg_ok(&[
        "exec",
        "web",
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/",
    ]);
    assert_eq!(page.stdout, PAGE);

    let out = gw.shg(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(
        out.code,
        Some(7),
        "exec must exit with the command's code:\n{out}"
    );
    assert_eq!(out.stdout, "out\n", "{out}");
    assert_eq!(out.stderr, "err\n", "{out}");

    let missing = gw.shg(&["exec", "web", "--", "/bin/nope"]);
    assert_eq!(
        missing.code,
        Some(127),
        "a command that does not exist exits 127:\n{missing}"
    );
    assert!(missing.stderr.contains("/bin/nope"), "{missing}");

    let stopped = gw.shg_ok(&["stop", "web"]);
    assert!(stopped.stdout.contains("stopped web"), "{stopped}");
    let web = gw.svc("web").unwrap();
    assert_eq!((web.state.as_str(), web.pid), ("stopped", None), "{web:?}");
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "pid {first} still exists after `shg stop`"
    );

    gw.shg_ok(&["start", "web"]);
    let second = gw.wait_running("web").pid.unwrap();
    assert_ne!(second, first);
    assert!(alive(second));

    gw.shg_ok(&["restart", "web"]);
    let third = gw.wait_running("web").pid.unwrap();
    assert_ne!(third, second, "`shg restart` must start a new process");
    assert!(
        !alive(second),
        "the old process {second} survived `shg restart`"
    );

    let detail = gw.inspect("web");
    assert_eq!(detail["name"], "web");
    assert_eq!(detail["provider"], "acme");
    assert_eq!(detail["manifest"]["name"], "web");
    assert_eq!(detail["manifest"]["run"]["command"][0], "/bin/httpd");
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .expect("inspect lists events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in ["installed", "started", "stopped", "health"] {
        assert!(
            kinds.contains(&kind),
            "no `{kind}` event in inspect: {kinds:?}"
        );
    }

    let removed = gw.shg_ok(&["remove", "web"]);
    assert!(removed.stdout.contains("removed web"), "{removed}");
    assert!(
        gw.svc("web").is_none(),
        "web is still listed after `shg remove`"
    );
    assert!(
        !gw.service_dir("web").exists(),
        "{} is left after `shg remove`",
        gw.service_dir("web").display()
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = hierarchy.path().join(cgroups_path.trim_start_matches('/'));
        assert!(
            !left.exists(),
            "{} is left after `shg remove`",
            left.display()
        );
    }
    assert!(!alive(third), "pid {third} survived `shg remove`");
}

#[test]
fn a_service_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    let gw = Gateway::start();
    let stubborn = r#"
name = "stubborn"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sh", "-c", "trap '' TERM; echo trapped; while true; do sleep 1; done"]
stop_timeout = "1s"
"#;
    gw.install("stubborn", stubborn, &[]);
    let pid = gw.wait_running("stubborn").pid.unwrap();
    crate::harness::eventually("the trap to be set", Duration::from_secs(10), || {
        gw.shg_ok(&["logs", "stubborn"])
            .stdout
            .contains("trapped")
            .then_some(())
    });
    let asked = std::time::Instant::now();
    gw.shg_ok(&["stop", "stubborn"]);
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "stopped after {took:?}: SIGTERM was not ignored, the test proves nothing"
    );
    assert!(
        took < Duration::from_secs(8),
        "`shg stop` took {took:?} with a 1s stop timeout"
    );
    let s = gw.svc("stubborn").unwrap();
    assert_eq!((s.state.as_str(), s.pid), ("stopped", None), "{s:?}");
    assert!(!alive(pid));
    let events = gw.events("stubborn");
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "killed" && m.contains("SIGKILL")),
        "{events:#?}"
    );
}

/// A stop that comes right behind a start (it waits for the start's lock, then signals at
/// once) reaches a container whose init is still libcontainer's, before it becomes
/// `shg-init`: as PID 1 of its namespace with no handler, it used to drop SIGTERM, and the
/// service ran on until the stop timeout's SIGKILL. The runtime now creates the container with
/// the signals `shg-init` forwards blocked, so one sent early waits for it.
#[test]
fn a_stop_right_behind_a_start_ends_the_service_with_sigterm() {
    let gw = Gateway::start();
    let brief = r#"
name = "brief"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sleep", "1000000"]
stop_timeout = "2s"

[restart]
policy = "never"
"#;
    gw.install("brief", brief, &[]);
    gw.wait_running("brief");
    gw.shg_ok(&["stop", "brief"]);
    let mut raced = 0;
    for round in 0..30 {
        let mut start = gw.spawn_shg(&["start", "brief"], Stdio::null(), Stdio::null());
        // Stops sent from 0 to 9 ms behind the start: some wait for the start's lock and
        // signal the moment it is released, right after the container was created.
        std::thread::sleep(Duration::from_millis(round % 10));
        let stop = gw.shg(&["stop", "brief"]);
        let started = start.0.wait().expect("wait for shg start");
        assert!(
            started.success() && stop.ok(),
            "start {started:?}, stop {stop:?}"
        );
        // A stop that came first found nothing to stop, and the start then ran it.
        if gw.svc("brief").unwrap().state != "stopped" {
            gw.shg_ok(&["stop", "brief"]);
        } else {
            raced += 1;
        }
    }
    let killed: Vec<_> = gw
        .events("brief")
        .into_iter()
        .filter(|(k, _)| k == "killed")
        .collect();
    assert!(raced > 0, "no stop came right behind its start");
    assert!(
        killed.is_empty(),
        "{} of {raced} stops behind a start needed SIGKILL: {killed:#?}",
        killed.len()
    );
}

/// The agent records a service's end as soon as its init has written the exit status (the
/// init then closes its exit notice, a FIFO the agent reads), while the kernel still tears the
/// container down; the container is deleted and the init reaped only once the init is gone,
/// under the service's lock. Each start behind an exit must find the old container deleted
/// (no refusal, no leftover), each exit must be recorded once with its code, and no init may
/// stay a zombie.
#[test]
fn a_start_behind_each_exit_finds_the_last_container_gone() {
    let gw = Gateway::start();
    let quick = r#"
name = "quick"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/true"]

[restart]
policy = "never"
"#;
    gw.install("quick", quick, &[]);
    let exited = |gw: &Gateway| {
        gw.events("quick")
            .iter()
            .filter(|(kind, _)| kind == "exited")
            .count()
    };
    let wait_exit = |gw: &Gateway, count: usize| {
        crate::harness::eventually("the exit", Duration::from_secs(20), || {
            (exited(gw) >= count).then_some(())
        })
    };
    wait_exit(&gw, 1);
    let fifo = gw.service_dir("quick").join("exit");
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = std::fs::metadata(&fifo)
            .expect("the exit notice")
            .file_type();
        assert!(kind.is_fifo(), "{fifo:?} is not a FIFO: {kind:?}");
    }
    for round in 2..=16 {
        gw.shg_ok(&["start", "quick"]);
        wait_exit(&gw, round);
    }
    let svc = gw.svc("quick").unwrap();
    assert_eq!((svc.state.as_str(), svc.exit_code), ("exited", Some(0)));
    assert_eq!(exited(&gw), 16);
    let agent = gw.agent_pid();
    crate::harness::eventually("no zombie init", Duration::from_secs(5), || {
        crate::harness::zombie_children(agent)
            .is_empty()
            .then_some(())
    });
    let log = gw.agent_log();
    assert!(
        !log.contains("cannot delete the container") && !log.contains("handling the exit failed"),
        "{log}"
    );
}

#[test]
fn killing_an_exec_client_ends_its_command() {
    let gw = Gateway::start();
    let idle = "name = \"idle\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = [\"/bin/sleep\", \"1000000\"]\n";
    gw.install("idle", idle, &[]);
    gw.wait_running("idle");
    let running = |gw: &Gateway| {
        gw.shg_ok(&["exec", "idle", "--", "ps", "-o", "args"])
            .stdout
            .lines()
            .any(|l| l == "sleep 777")
    };

    use std::process::Stdio;
    let client = gw.spawn_shg(
        &["exec", "idle", "--", "sleep", "777"],
        Stdio::null(),
        Stdio::null(),
    );
    crate::harness::eventually("the exec'd command to run", Duration::from_secs(15), || {
        running(&gw).then_some(())
    });
    // What Ctrl-C on `shg exec` amounts to: the client goes away.
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(&gw) {
        assert!(
            std::time::Instant::now() < deadline,
            "`sleep 777` still runs in the service 10s after its `shg exec` client was killed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
