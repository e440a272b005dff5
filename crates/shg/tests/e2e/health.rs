//! Health checks as `shg ps` shows them: starting, healthy, unhealthy.

use std::time::Duration;

use crate::harness::{zombie_children, Gateway};

const FLAG: &str = r#"
name = "flag"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sleep", "1000000"]

[health]
exec = ["/bin/sh", "-c", "test -f /tmp/ok"]
interval = "1s"
retries = 2
# Early failures do not count, so the test has time to see `starting` turn `healthy`.
start_period = "5s"
"#;

#[test]
fn an_exec_check_follows_what_the_service_does() {
    let gw = Gateway::start();
    let svc = gw.install("flag", FLAG, &[]);
    assert_eq!(
        svc.health, "starting",
        "a fresh service with a check is `starting`: {svc:?}"
    );

    gw.shg_ok(&["exec", "flag", "--", "touch", "/tmp/ok"]);
    gw.wait_for("flag", "healthy", Duration::from_secs(15), |s| {
        s.health == "healthy"
    });

    gw.shg_ok(&["exec", "flag", "--", "rm", "/tmp/ok"]);
    let sick = gw.wait_for("flag", "unhealthy", Duration::from_secs(20), |s| {
        s.health == "unhealthy"
    });
    assert_eq!(
        sick.state, "running",
        "an unhealthy service still runs: {sick:?}"
    );

    let events = gw.events("flag");
    let health: Vec<&str> = events
        .iter()
        .filter(|(k, _)| k == "health")
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        health
            .iter()
            .any(|m| m.contains("healthy") && !m.contains("unhealthy")),
        "{health:?}"
    );
    assert!(health.iter().any(|m| m.contains("unhealthy")), "{health:?}");
}

#[test]
fn a_tcp_check_tells_a_listening_port_from_a_dead_one() {
    let gw = Gateway::start();
    let manifest = |name: &str, command: &str, port: u16| {
        format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = {command}\n\n\
             [health]\ntcp = {port}\ninterval = \"1s\"\n"
        )
    };
    gw.install(
        "listener",
        &manifest(
            "listener",
            r#"["/bin/httpd", "-f", "-p", "9000", "-h", "/www"]"#,
            9000,
        ),
        &[],
    );
    gw.install(
        "deaf",
        &manifest("deaf", r#"["/bin/sleep", "1000000"]"#, 9999),
        &[],
    );

    gw.wait_for("listener", "healthy", Duration::from_secs(15), |s| {
        s.health == "healthy"
    });
    let deaf = gw.wait_for("deaf", "unhealthy", Duration::from_secs(20), |s| {
        s.health == "unhealthy"
    });
    assert_eq!(deaf.state, "running", "{deaf:?}");
    let events = gw.events("deaf");
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "health" && m.contains("unhealthy")),
        "{events:#?}"
    );
}

#[test]
fn a_check_that_hangs_is_ended_when_it_times_out() {
    let mut gw = Gateway::start();
    let hung = r#"
name = "hung"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sleep", "1000000"]

[health]
exec = ["/bin/sleep", "30"]
interval = "1s"
"#;
    gw.install("hung", hung, &[]);
    gw.wait_running("hung");
    // Three checks in a row time out (after 1s each) before the service counts as unhealthy.
    gw.wait_for("hung", "unhealthy", Duration::from_secs(20), |s| {
        s.health == "unhealthy"
    });
    // A few more timed-out checks.
    std::thread::sleep(Duration::from_secs(3));
    let inside = gw.shg_ok(&["exec", "hung", "--", "ps", "-o", "pid,stat,args"]);
    let checks = inside
        .stdout
        .lines()
        .filter(|l| l.ends_with("/bin/sleep 30"))
        .count();
    assert!(
        checks <= 1,
        "{checks} health checks run at once: timed-out checks are left running\n{inside}"
    );
    // The init, the service, and one check under way (with the runtime's helper joining it).
    let count: u32 = std::fs::read_to_string(gw.pids_cgroup("hung").join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        count <= 5,
        "{count} processes count against the service's pids limit\n{inside}"
    );
    let first = zombie_children(gw.agent_pid());
    std::thread::sleep(Duration::from_secs(1));
    let lasting: Vec<i32> = zombie_children(gw.agent_pid())
        .into_iter()
        .filter(|p| first.contains(p))
        .collect();
    assert!(
        lasting.is_empty(),
        "the agent leaves zombie children behind: {lasting:?}"
    );
}
