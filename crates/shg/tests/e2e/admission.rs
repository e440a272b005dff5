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
