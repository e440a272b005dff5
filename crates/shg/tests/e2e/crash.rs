//! The agent killed with SIGKILL: services keep running and are re-adopted, services that
//! died meanwhile are handled by their policy, and a half-done install is rolled back.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{alive, eventually, signal, wait_timeout, Gateway, SHG};

fn sleeper(name: &str, policy: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\n\
         command = [\"/bin/sleep\", \"1000000\"]\n\n[restart]\npolicy = \"{policy}\"\n"
    )
}

/// The file system type mounted on the agent's `containers` directory, if one is.
fn state_mount(gw: &Gateway) -> Option<String> {
    let point = gw.dir.join("containers");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let mounted = fields.nth(4)? == point.to_str()?;
        // After the optional fields, `-` and then the file system type.
        let fs_type = fields.skip_while(|f| *f != "-").nth(1)?;
        mounted.then(|| fs_type.to_string())
    })
}

#[test]
fn services_outlive_an_agent_crash_and_are_readopted() {
    let mut gw = Gateway::start();
    gw.install("keeper", &sleeper("keeper", "on-failure"), &[]);
    gw.install("loner", &sleeper("loner", "never"), &[]);
    gw.install("watched", &sleeper("watched", "on-failure"), &[]);
    gw.install("resting", &sleeper("resting", "always"), &[]);
    let keeper = gw.wait_running("keeper").pid.unwrap();
    let loner = gw.wait_running("loner").pid.unwrap();
    let watched = gw.wait_running("watched").pid.unwrap();
    gw.wait_running("resting");
    gw.shg_ok(&["stop", "resting"]);

    // The containers' state is on the agent's tmpfs, which outlives the agent with them.
    assert_eq!(state_mount(&gw).as_deref(), Some("tmpfs"));
    gw.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(keeper) && alive(loner),
        "services died with the agent"
    );
    assert_eq!(state_mount(&gw).as_deref(), Some("tmpfs"));
    assert!(gw.dir.join("containers/keeper/state.json").is_file());

    gw.restart_agent();
    for (name, pid) in [("keeper", keeper), ("loner", loner)] {
        let s = gw.svc(name).unwrap();
        assert_eq!(
            (s.state.as_str(), s.pid, s.restarts),
            ("running", Some(pid), 0),
            "after the crash: {s:?}"
        );
        let events = gw.events(name);
        assert!(
            events.iter().any(|(k, _)| k == "adopted"),
            "no `adopted` event for {name}: {events:#?}"
        );
    }
    let resting = gw.svc("resting").unwrap();
    assert_eq!(
        (resting.state.as_str(), resting.pid),
        ("stopped", None),
        "a stopped service stays stopped: {resting:?}"
    );

    // Re-adopted services are still managed: exec works, and an exit is seen and handled.
    let out = gw.shg_ok(&["exec", "keeper", "--", "cat", "/proc/1/cmdline"]);
    assert!(out.stdout.starts_with("/.shg/init"), "{out}");
    gw.shg_ok(&["exec", "watched", "--", "kill", "2"]);
    let back = gw.wait_for(
        "watched",
        "restarted by the new agent",
        Duration::from_secs(20),
        |s| s.state == "running" && s.pid.is_some_and(|p| p != watched),
    );
    assert_eq!(back.restarts, 1, "{back:?}");
    let events = gw.events("watched");
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "exited" && m.contains("signal 15")),
        "{events:#?}"
    );

    // Now they die while no agent watches.
    gw.kill9();
    signal(keeper, "KILL");
    signal(loner, "KILL");
    eventually(
        "the killed services to be gone",
        Duration::from_secs(10),
        || (!alive(keeper) && !alive(loner)).then_some(()),
    );
    gw.restart_agent();

    let restarted = gw.wait_for("keeper", "restarted", Duration::from_secs(20), |s| {
        s.state == "running" && s.pid.is_some_and(|p| p != keeper)
    });
    assert_eq!(restarted.restarts, 1, "{restarted:?}");
    let stayed = gw.wait_for("loner", "exited", Duration::from_secs(20), |s| {
        s.state == "exited"
    });
    assert_eq!(stayed.pid, None, "{stayed:?}");
    for name in ["keeper", "loner"] {
        let events = gw.events(name);
        let adopted = events.iter().rposition(|(k, _)| k == "adopted").unwrap();
        assert!(
            events[adopted..].iter().any(|(k, _)| k == "exited"),
            "the end of {name} while the agent was down is not recorded: {events:#?}"
        );
    }
    assert!(gw.events("keeper").iter().any(|(k, _)| k == "restarting"));

    // An orderly stop of the agent (an upgrade) leaves services running too, and their state.
    let keeper = restarted.pid.unwrap();
    gw.stop_agent();
    assert!(alive(keeper), "stopping the agent stopped a service");
    assert_eq!(state_mount(&gw).as_deref(), Some("tmpfs"));
    gw.restart_agent();
    let s = gw.svc("keeper").unwrap();
    assert_eq!(
        (s.state.as_str(), s.pid, s.restarts),
        ("running", Some(keeper), 1),
        "{s:?}"
    );
}

#[test]
fn an_install_cut_short_by_a_crash_is_rolled_back() {
    let mut gw = Gateway::start();
    // Its image counts against the storage it reserves.
    let manifest = "name = \"bulky\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = [\"/bin/sleep\", \"1000000\"]\n\n[resources]\nstorage = { reserve = \"512MiB\" }\n";
    let dir = gw.package_dir("bulky", manifest, &[]);
    // Unpacking 256 MiB (decompressing, hashing, writing and syncing it) takes a second or
    // more: the crash window.
    // Zeros keep the package small and quick to build; only the unpacked size matters here.
    std::fs::File::create(dir.join("rootfs/blob"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let tar = gw.work.join("bulky.tar");
    let packed = Command::new(SHG)
        .arg("pack")
        .arg(&dir)
        .arg("-o")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        packed.status.success(),
        "{}",
        String::from_utf8_lossy(&packed.stderr)
    );
    gw.sign(&tar, "e2e");

    let partial = gw.dir.join("tmp/bulky.partial");
    let mut install = gw.spawn_shg(
        &["install", tar.to_str().unwrap()],
        Stdio::null(),
        Stdio::piped(),
    );
    // Registered as `installing`, unpacking, not yet `installed`: the crash window.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !partial.exists() {
        assert!(
            install.0.try_wait().unwrap().is_none(),
            "the install ended before it was cut short; make the package bigger"
        );
        assert!(
            Instant::now() < deadline,
            "the install never started unpacking"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = gw.svc("bulky").expect("an install under way is listed");
    assert_eq!(during.state, "installing", "{during:?}");
    assert!(
        partial.exists(),
        "the install finished before it was cut short; make the package bigger"
    );
    gw.kill9();
    let status = wait_timeout(&mut install.0, Duration::from_secs(30))
        .expect("the client notices the agent is gone");
    let mut err = String::new();
    install
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success(),
        "the install reported success although the agent died: {err}"
    );

    gw.restart_agent();
    assert!(
        gw.svc("bulky").is_none(),
        "a half-done install is listed: {:?}",
        gw.svc("bulky")
    );
    let left: Vec<_> = std::fs::read_dir(gw.dir.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the crashed install left {left:?}");
    assert!(
        !gw.service_dir("bulky").exists(),
        "the crashed install left its service directory"
    );
    let events = gw.events("bulky");
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "install-failed" && m.contains("rolled back")),
        "the rollback is not recorded: {events:#?}"
    );

    let again = gw.shg_timeout(
        &["install", tar.to_str().unwrap()],
        Duration::from_secs(180),
    );
    assert!(
        again.ok(),
        "installing again after the rollback failed:\n{again}"
    );
    gw.wait_running("bulky");
}

/// The runtime helpers (`shg-runtime serve`) whose parent is `agent`.
fn runtime_servers(agent: i32) -> Vec<i32> {
    runtime_helpers(agent, "serve")
}

/// The agent's `shg-runtime MODE …` children.
fn runtime_helpers(agent: i32, mode: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_helper = words.first().is_some_and(|w| w.ends_with(b"shg-runtime"))
            && words.get(1) == Some(&mode.as_bytes());
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let after = &stat[stat.rfind(')')? + 2..];
                after.split_whitespace().nth(1)?.parse::<i32>().ok()
            });
        if is_helper && ppid == Some(agent) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_runtime_helper_that_died_is_replaced_and_none_outlives_the_agent() {
    let mut gw = Gateway::start();
    gw.install("first", &sleeper("first", "never"), &[]);
    gw.wait_running("first");
    let agent = gw.agent_pid();
    let servers = runtime_servers(agent);
    assert_eq!(
        servers.len(),
        1,
        "one runtime helper serves the agent's starts: {servers:?}"
    );
    signal(servers[0], "KILL");
    eventually("the killed helper is gone", Duration::from_secs(10), || {
        (!alive(servers[0])).then_some(())
    });

    // The next start finds the helper gone and starts another.
    gw.install("second", &sleeper("second", "never"), &[]);
    gw.wait_running("second");
    let replaced = runtime_servers(agent);
    assert!(
        replaced.len() == 1 && replaced[0] != servers[0],
        "a new helper serves the starts: {replaced:?} (the killed one was {})",
        servers[0]
    );

    // The helper ends with the agent that started it.
    gw.kill9();
    eventually(
        "the helper ends once its agent is gone",
        Duration::from_secs(10),
        || (!alive(replaced[0])).then_some(()),
    );
}

/// A command run in a service whose helper was SIGKILLed is orphaned to the agent. Once the
/// service's init ends, the kernel cannot finish that init's exit before the orphan is reaped:
/// the agent must reap it, or the service stays `stopping` for ever.
#[test]
fn a_command_orphaned_by_a_killed_exec_helper_does_not_hold_up_the_stop() {
    let gw = Gateway::start();
    gw.install("host", &sleeper("host", "never"), &[]);
    gw.wait_running("host");
    let agent = gw.agent_pid();
    let mut exec = gw.spawn_shg(
        &["exec", "host", "--", "/bin/sleep", "100000"],
        Stdio::null(),
        Stdio::null(),
    );
    let helper = eventually("the exec helper", Duration::from_secs(10), || {
        runtime_helpers(agent, "exec").first().copied()
    });
    // Let the command start inside the container, then take its helper away.
    std::thread::sleep(Duration::from_millis(500));
    signal(helper, "KILL");
    let _ = wait_timeout(&mut exec.0, Duration::from_secs(10));

    gw.shg_ok(&["stop", "host"]);
    let stopped = gw.svc("host").unwrap();
    assert_eq!(stopped.state, "stopped", "{stopped:?}");
}
