//! Updates: the new release is prepared beside the running one and switched in, the data
//! volume carries over, a release that fails its health window is rolled back by the agent,
//! and an agent killed mid-update leaves exactly the old or the new release.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, Gateway};

/// A release of `app`: prints its version, keeps `/data/history`, then runs `body`.
fn app(version: &str, body: &str, extra: &str) -> String {
    format!(
        "name = \"app\"\nversion = \"{version}\"\nprovider = \"acme\"\n\n[run]\n\
         command = [\"/bin/sh\", \"-c\", \"echo app {version}; echo {version} >> /data/history; {body}\"]\n\
         {extra}"
    )
}

const SERVE: &str = "exec sleep 100000";

fn package(gw: &Gateway, dir: &str, manifest: &str) -> PathBuf {
    gw.package(dir, manifest, &[])
}

fn events_of(gw: &Gateway, kind: &str) -> Vec<String> {
    gw.events("app")
        .into_iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, m)| m)
        .collect()
}

fn detail(gw: &Gateway) -> Value {
    gw.inspect("app")
}

fn history(gw: &Gateway) -> String {
    gw.shg_ok(&["exec", "app", "--", "cat", "/data/history"])
        .stdout
}

#[test]
fn an_update_switches_releases_keeps_the_data_and_rolls_back_by_hand() {
    let gw = Gateway::start();
    let v1 = package(&gw, "app-1", &app("1.0.0", SERVE, ""));
    let v2 = package(&gw, "app-2", &app("2.0.0", SERVE, ""));
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.wait_running("app");
    let first_pid = gw.svc("app").unwrap().pid;

    let out = gw.shg_ok(&["update", "app", v2.to_str().unwrap(), "--window", "2s"]);
    assert!(
        out.stdout.contains("updated app to 2.0.0 (from 1.0.0)"),
        "{out}"
    );
    let svc = gw.wait_running("app");
    assert_eq!(svc.version, "2.0.0");
    assert_ne!(svc.pid, first_pid, "the old release still runs");
    let d = detail(&gw);
    assert_eq!(d["previous_version"], "1.0.0");
    assert!(
        d["paths"]["rootfs"]
            .as_str()
            .unwrap()
            .contains("/releases/"),
        "{d}"
    );
    // The data volume carried over: both releases wrote to the same history.
    eventually(
        "both releases in the history",
        Duration::from_secs(10),
        || (history(&gw) == "1.0.0\n2.0.0\n").then_some(()),
    );
    eventually(
        "the health window to close",
        Duration::from_secs(15),
        || (!events_of(&gw, "update-done").is_empty()).then_some(()),
    );
    let done = events_of(&gw, "update-done");
    assert!(
        done[0].contains("1.0.0 is kept for `shg rollback app`"),
        "{done:?}"
    );

    // Nothing to do for the same package; another service's package is no update.
    let out = gw.shg(&["update", "app", v2.to_str().unwrap()]);
    assert!(
        !out.ok() && out.stderr.contains("already runs version 2.0.0"),
        "{out}"
    );
    let other = gw.package(
        "other",
        &app("1.0.0", SERVE, "").replace("\"app\"", "\"other\""),
        &[],
    );
    let out = gw.shg(&["update", "app", other.to_str().unwrap()]);
    assert!(
        !out.ok() && out.stderr.contains("the package is `other`, not `app`"),
        "{out}"
    );
    // A version with no registry to look in is explained.
    let out = gw.shg(&["update", "app", "3.0.0"]);
    assert!(
        !out.ok() && out.stderr.contains("installed from a file"),
        "{out}"
    );

    // By hand: back to 1.0.0, the data still there; the releases are both kept.
    let out = gw.shg_ok(&["rollback", "app"]);
    assert!(out.stdout.contains("rolled app back to 1.0.0"), "{out}");
    let svc = gw.wait_running("app");
    assert_eq!(svc.version, "1.0.0");
    assert_eq!(detail(&gw)["previous_version"], "2.0.0");
    eventually(
        "the old release's line in the history",
        Duration::from_secs(10),
        || (history(&gw) == "1.0.0\n2.0.0\n1.0.0\n").then_some(()),
    );
    let releases = std::fs::read_dir(gw.service_dir("app").join("releases"))
        .unwrap()
        .count();
    assert_eq!(releases, 2);
    gw.shg_ok(&["remove", "app"]);
}

#[test]
fn a_release_that_fails_its_health_window_is_rolled_back_by_the_agent() {
    let gw = Gateway::start();
    let health = "[health]\nexec = [\"/bin/sh\", \"-c\", \"test -f /tmp/ok\"]\ninterval = \"1s\"\nretries = 1\n";
    let healthy = "touch /tmp/ok; exec sleep 100000";
    let v1 = package(&gw, "app-1", &app("1.0.0", healthy, health));
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.wait_for("app", "healthy", Duration::from_secs(20), |s| {
        s.health == "healthy"
    });

    // 2.0.0 exits after a second: the agent goes back to 1.0.0 by itself.
    let crashing = package(&gw, "app-2", &app("2.0.0", "sleep 1; exit 3", health));
    gw.shg_ok(&[
        "update",
        "app",
        crashing.to_str().unwrap(),
        "--window",
        "20s",
    ]);
    let back = gw.wait_for("app", "back on 1.0.0", Duration::from_secs(30), |s| {
        s.version == "1.0.0" && s.state == "running"
    });
    assert_eq!(back.version, "1.0.0");
    let rolled = events_of(&gw, "rolled-back");
    assert!(
        rolled
            .iter()
            .any(|m| m.contains("by itself") && m.contains("2.0.0 failed")),
        "{rolled:?}"
    );
    gw.wait_for("app", "healthy again", Duration::from_secs(20), |s| {
        s.health == "healthy"
    });
    let reason = &detail(&gw)["events"];
    assert!(reason.to_string().contains("rolled back"), "{reason}");

    // 3.0.0 runs but never becomes healthy: rolled back when its window closes.
    let sick = package(&gw, "app-3", &app("3.0.0", SERVE, health));
    gw.shg_ok(&["update", "app", sick.to_str().unwrap(), "--window", "4s"]);
    assert_eq!(gw.svc("app").unwrap().version, "3.0.0");
    gw.wait_for("app", "back on 1.0.0", Duration::from_secs(30), |s| {
        s.version == "1.0.0" && s.state == "running"
    });
    let rolled = events_of(&gw, "rolled-back");
    assert!(
        rolled.iter().any(|m| m.contains("3.0.0 failed")
            && (m.contains("not healthy") || m.contains("health check failed"))),
        "{rolled:?}"
    );
    gw.shg_ok(&["remove", "app"]);
}

#[test]
fn an_agent_killed_during_an_update_leaves_one_release_and_the_next_start_finishes() {
    let mut gw = Gateway::start();
    let v1 = package(&gw, "app-1", &app("1.0.0", SERVE, ""));
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.wait_running("app");

    // A release slow to unpack (256 MiB of zeros, which count against the storage it
    // reserves): killed while it is prepared.
    let reserve = "[resources]\nstorage = { reserve = \"512MiB\" }\n";
    let dir = gw.package_dir("app-2", &app("2.0.0", SERVE, reserve), &[]);
    std::fs::File::create(dir.join("rootfs/blob"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let v2 = gw.work.join("app-2.tar");
    let key = gw.trusted_key("acme");
    gw.shg_ok(&[
        "pack",
        dir.to_str().unwrap(),
        "-o",
        v2.to_str().unwrap(),
        "--sign",
        key.to_str().unwrap(),
    ]);
    let _update = gw.spawn_shg(
        &["update", "app", v2.to_str().unwrap()],
        Stdio::null(),
        Stdio::null(),
    );
    eventually("the update to start", Duration::from_secs(30), || {
        gw.svc("app").filter(|s| s.state == "updating").map(|_| ())
    });
    gw.kill9();
    gw.restart_agent();
    let svc = gw.wait_running("app");
    assert_eq!(svc.version, "1.0.0", "{svc:?}");
    let abandoned = events_of(&gw, "update-abandoned");
    assert!(
        abandoned.iter().any(|m| m.contains("stays on 1.0.0")),
        "{abandoned:?}"
    );
    let releases: Vec<_> = std::fs::read_dir(gw.service_dir("app").join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        releases.len(),
        1,
        "half a release left behind: {releases:?}"
    );

    // Killed after the switch: the next agent carries the health window on, and rolls a
    // release that fails within it back.
    let failing = package(&gw, "app-3", &app("3.0.0", "sleep 4; exit 1", ""));
    gw.shg_ok(&[
        "update",
        "app",
        failing.to_str().unwrap(),
        "--window",
        "30s",
    ]);
    assert_eq!(gw.svc("app").unwrap().version, "3.0.0");
    gw.kill9();
    gw.restart_agent();
    gw.wait_for(
        "app",
        "rolled back to 1.0.0",
        Duration::from_secs(40),
        |s| s.version == "1.0.0" && s.state == "running",
    );
    let rolled = events_of(&gw, "rolled-back");
    assert!(
        rolled.iter().any(|m| m.contains("3.0.0 failed")),
        "{rolled:?}"
    );
    gw.shg_ok(&["remove", "app"]);
}
