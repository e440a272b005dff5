//! Restart policies as `shg ps` shows them: back-off, crash loop, and services left exited.

use std::time::Duration;

use crate::harness::{toml_list, Gateway};

fn exiting(name: &str, code: i32, policy: &str) -> String {
    let script = format!("echo {name} ran; exit {code}");
    format!(
        r#"
name = "{name}"
version = "1.0.0"
provider = "e2e"

[run]
command = {}

[restart]
policy = "{policy}"
"#,
        toml_list(&["/bin/sh", "-c", &script])
    )
}

#[test]
fn a_failing_service_backs_off_then_shows_a_crash_loop() {
    let gw = Gateway::start();
    gw.install("flaky", &exiting("flaky", 3, "on-failure"), &[]);

    let waiting = gw.wait_for(
        "flaky",
        "restarted and waiting",
        Duration::from_secs(20),
        |s| s.restarts >= 1 && (s.state == "backoff" || s.state == "crash-loop"),
    );
    let reason = waiting.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exited with code 3"),
        "reason does not say why: {waiting:?}"
    );
    assert_eq!(waiting.exit_code, Some(3), "{waiting:?}");

    // Back-off 0.5s, 1s, 2s, 4s: the fifth quick failure comes after about 8s.
    let looping = gw.wait_for("flaky", "crash-loop", Duration::from_secs(45), |s| {
        s.state == "crash-loop"
    });
    assert!(
        looping.restarts >= 4,
        "crash-loop after only {} restarts: {looping:?}",
        looping.restarts
    );
    assert!(looping
        .reason
        .unwrap_or_default()
        .contains("exited with code 3"));
    let events = gw.events("flaky");
    assert!(
        events.iter().any(|(k, _)| k == "crash-loop"),
        "no crash-loop event: {events:#?}"
    );
    assert!(
        events.iter().filter(|(k, _)| k == "restarting").count() >= 4,
        "{events:#?}"
    );
    let logs = gw.shg_ok(&["logs", "flaky"]).stdout;
    assert!(
        logs.lines().filter(|l| *l == "flaky ran").count() >= 5,
        "each run's output is kept:\n{logs}"
    );
}

#[test]
fn policies_decide_what_happens_after_an_exit() {
    let gw = Gateway::start();
    gw.install("never-fails", &exiting("never-fails", 3, "never"), &[]);
    gw.install("done-ok", &exiting("done-ok", 0, "on-failure"), &[]);
    gw.install("again", &exiting("again", 0, "always"), &[]);

    let never = gw.wait_for("never-fails", "exited", Duration::from_secs(20), |s| {
        s.state == "exited"
    });
    assert_eq!(
        (never.exit_code, never.restarts, never.pid),
        (Some(3), 0, None),
        "{never:?}"
    );
    let reason = never.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exited with code 3") && reason.contains("never"),
        "{never:?}"
    );

    let done = gw.wait_for("done-ok", "exited", Duration::from_secs(20), |s| {
        s.state == "exited"
    });
    assert_eq!((done.exit_code, done.restarts), (Some(0), 0), "{done:?}");

    let again = gw.wait_for("again", "restarted", Duration::from_secs(20), |s| {
        s.restarts > 0
    });
    assert_eq!(again.exit_code.unwrap_or(0), 0, "{again:?}");

    // Longer than the first back-off: nothing restarted the two that are meant to stay down.
    std::thread::sleep(Duration::from_millis(1500));
    for (name, code) in [("never-fails", 3), ("done-ok", 0)] {
        let s = gw.svc(name).unwrap();
        assert_eq!(
            (s.state.as_str(), s.exit_code, s.restarts),
            ("exited", Some(code), 0),
            "{s:?}"
        );
        let events = gw.events(name);
        assert!(
            !events.iter().any(|(k, _)| k == "restarting"),
            "{name} was restarted: {events:#?}"
        );
    }
    gw.wait_for("again", "restarted again", Duration::from_secs(20), |s| {
        s.restarts >= 2
    });
}
