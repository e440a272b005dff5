//! Admission control through the CLI: a reservation that does not fit is refused with the
//! resource, the holders and the way out, and the refusal changes nothing.

use crate::harness::Gateway;

/// 200 MiB of memory, 72 MiB kept for the system: 128 MiB for services.
const SMALL_GATEWAY: &str = r#"
[capacity]
cpu = 2.0
memory = "200MiB"
[reserve]
cpu = 0.0
memory = "72MiB"
"#;

fn manifest(name: &str, provider: &str, memory_reserve: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n\n\
         [resources]\nmemory = {{ reserve = \"{memory_reserve}\", limit = \"256MiB\" }}\ncpu = {{ reserve = 0.1 }}\n"
    )
}

fn refusals(gw: &Gateway) -> usize {
    let out = gw.shg_ok(&["events", "--json"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    events
        .iter()
        .filter(|e| e["kind"] == "admission-refused")
        .count()
}

#[test]
fn a_reservation_that_does_not_fit_is_refused_with_its_reason() {
    let gw = Gateway::start_with_config(Some(SMALL_GATEWAY));
    gw.install("big", &manifest("big", "vodco", "80MiB"), &[]);
    gw.wait_running("big");
    let extra = gw.package("extra", &manifest("extra", "acme", "64MiB"), &[]);
    let extra = extra.to_str().unwrap();

    // Dry run: the verdict, nothing recorded.
    let dry = gw.shg(&["install", extra, "--dry-run"]);
    assert!(!dry.ok(), "{dry}");
    assert!(dry.stderr.contains("cannot admit `extra`"), "{dry}");
    assert!(dry.stderr.contains("memory"), "{dry}");
    assert!(dry.stderr.contains("`big` (priority 50) 80 MiB"), "{dry}");
    assert_eq!(refusals(&gw), 0, "a dry run journals nothing");

    // The real thing: refused, journaled, nothing installed.
    let before = gw.ps();
    let out = gw.shg(&["install", extra]);
    assert!(!out.ok(), "{out}");
    assert!(
        out.stderr
            .contains("needs 64 MiB, only 48 MiB free of 128 MiB"),
        "{out}"
    );
    assert!(out.stderr.contains("16 MiB short"), "{out}");
    assert!(
        out.stderr.contains("admission-refused"),
        "the stable code is shown: {out}"
    );
    assert_eq!(gw.ps(), before, "a refusal changes nothing");
    assert!(!gw.service_dir("extra").exists());
    assert_eq!(refusals(&gw), 1);

    // With `big` ranked below it, the way out is to stop `big`.
    gw.shg_ok(&["priority", "big", "10"]);
    let out = gw.shg(&["install", extra, "--dry-run"]);
    assert!(
        out.stderr
            .contains("stop `big` (priority 10) with `shg stop big`"),
        "{out}"
    );

    // Following that advice makes room.
    gw.shg_ok(&["stop", "big"]);
    let ok = gw.shg_ok(&["install", extra, "--dry-run"]);
    assert!(ok.stdout.contains("would be admitted"), "{ok}");
    gw.shg_ok(&["install", extra]);
    gw.wait_running("extra");

    // Now `big` does not fit back in: start is admitted like install.
    let start = gw.shg(&["start", "big"]);
    assert!(!start.ok(), "{start}");
    assert!(start.stderr.contains("cannot admit `big`"), "{start}");
    assert!(
        start.stderr.contains("`extra` (priority 50) 64 MiB"),
        "{start}"
    );
    assert_eq!(
        gw.svc("big").unwrap().state,
        "stopped",
        "a refused start changes nothing"
    );
    assert!(!gw.shg(&["start", "big", "--dry-run"]).ok());

    // The capacity view adds up.
    let cap: serde_json::Value =
        serde_json::from_str(&gw.shg_ok(&["capacity", "--json"]).stdout).unwrap();
    assert_eq!(cap["available"]["memory"], 128u64 << 20);
    assert_eq!(cap["reserved"]["memory"], 64u64 << 20);
    assert_eq!(cap["free"]["memory"], 64u64 << 20);
    let table = gw.shg_ok(&["capacity"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("memory") && l.contains("64 MiB")),
        "{table}"
    );
}

#[test]
fn the_household_confirms_the_proposal_and_the_agent_makes_room() {
    let gw = Gateway::start_with_config(Some(SMALL_GATEWAY));
    gw.install("vod", &manifest("vod", "vodco", "64MiB"), &[]);
    gw.shg_ok(&["priority", "vod", "5"]);
    gw.install("game", &manifest("game", "playco", "32MiB"), &[]);
    gw.shg_ok(&["priority", "game", "20"]);
    gw.wait_running("vod");
    gw.wait_running("game");
    let camera = gw.package("camera", &manifest("camera", "acme", "64MiB"), &[]);
    let camera = camera.to_str().unwrap();

    // Not on a terminal and not confirmed: the proposal is shown, nothing changes.
    let asked = gw.shg(&["install", camera, "--make-room"]);
    assert!(!asked.ok(), "{asked}");
    assert!(
        asked
            .stderr
            .contains("stop `vod` (priority 5) with `shg stop vod` to make room"),
        "{asked}"
    );
    assert!(
        asked.stderr.contains("not confirmed: nothing was stopped"),
        "{asked}"
    );
    assert_eq!(gw.svc("vod").unwrap().state, "running");
    assert!(gw.svc("camera").is_none());

    // Confirmed: the smallest set of lower-priority services is stopped, then it runs.
    let done = gw.shg_ok(&["install", camera, "--make-room", "--yes"]);
    assert!(done.stderr.contains("stopping `vod`"), "{done}");
    gw.wait_running("camera");
    let vod = gw.svc("vod").unwrap();
    assert_eq!(vod.state, "stopped");
    let reason = vod.reason.unwrap_or_default();
    assert!(
        reason
            .contains("`vod` (priority 5) was stopped to make room for another provider's service"),
        "{reason}"
    );
    assert!(gw
        .events("vod")
        .iter()
        .any(|(kind, _)| kind == "stopped-for-room"));
    assert_eq!(
        gw.svc("game").unwrap().state,
        "running",
        "only what was needed"
    );

    // Nothing of lower priority than `vod` holds memory: no proposal, nothing stopped.
    let none = gw.shg(&["start", "vod", "--make-room", "--yes"]);
    assert!(!none.ok(), "{none}");
    assert!(
        none.stderr
            .contains("no lower-priority service frees enough"),
        "{none}"
    );
    assert_eq!(gw.svc("camera").unwrap().state, "running");
    assert_eq!(gw.svc("game").unwrap().state, "running");
}

#[test]
fn each_resource_is_admitted_against_its_own_capacity() {
    let gw = Gateway::start_with_config(Some(
        "[capacity]\ncpu = 2.0\nmemory = \"1GiB\"\nstorage = \"1GiB\"\n\
         bandwidth_down = \"50Mbit\"\nbandwidth_up = \"10Mbit\"\n\
         [reserve]\ncpu = 0.5\nmemory = \"0\"\nstorage = \"0\"\n\
         bandwidth_down = \"10Mbit\"\nbandwidth_up = \"0\"\n",
    ));
    let cases = [
        (
            "cpu = { reserve = 1.75 }",
            "cpu: needs 1.75 cores, only 1.5 cores free of 1.5 cores (after the system reserve), 0.25 cores short",
        ),
        (
            "memory = { reserve = \"1536MiB\" }",
            "memory: needs 1.5 GiB, only 1 GiB free of 1 GiB (after the system reserve), 512 MiB short",
        ),
        (
            "storage = { reserve = \"2GiB\" }",
            "storage: needs 2 GiB, only 1 GiB free of 1 GiB (after the system reserve), 1 GiB short",
        ),
        (
            "bandwidth_down = { reserve = \"45Mbit\" }",
            "needs 45 Mbit/s, only 40 Mbit/s free of 40 Mbit/s (after the system reserve), 5 Mbit/s short",
        ),
        (
            "bandwidth_up = { reserve = \"12Mbit\" }",
            "needs 12 Mbit/s, only 10 Mbit/s free of 10 Mbit/s (after the system reserve), 2 Mbit/s short",
        ),
    ];
    for (i, (resources, want)) in cases.iter().enumerate() {
        let name = format!("svc{i}");
        let m = format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"acme\"\n\n\
             [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n\n[resources]\n{resources}\n"
        );
        let pkg = gw.package(&name, &m, &[]);
        let out = gw.shg(&["install", pkg.to_str().unwrap()]);
        assert!(!out.ok(), "{out}");
        assert!(out.stderr.contains(want), "want `{want}`:\n{out}");
        assert!(out.stderr.contains("admission-refused"), "{out}");
    }
    assert!(gw.ps().is_empty(), "every refusal changed nothing");
}
