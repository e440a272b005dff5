//! The bundle SHG writes is a plain OCI runtime bundle: runc runs it unchanged.

use std::process::Command;
use std::time::Duration;

use crate::harness::{run_captured, Gateway};

const HELLO: &str = r#"
name = "hello"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sh", "-c", "echo hello-from-runc"]

[restart]
policy = "never"
"#;

#[test]
fn the_generated_bundle_runs_unchanged_under_runc() {
    let gw = Gateway::start();
    gw.install("hello", HELLO, &[]);
    // Under SHG first; its container (and cgroup) is gone once it has exited.
    let done = gw.wait_for("hello", "exited", Duration::from_secs(20), |s| {
        s.state == "exited"
    });
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(gw.shg_ok(&["logs", "hello"]).stdout, "hello-from-runc\n");

    let config = std::fs::read(gw.service_dir("hello").join("bundle/config.json")).unwrap();
    let bundle = gw.work.join("runc-bundle");
    let root = gw.work.join("runc-root");
    let out_dir = gw.work.join("runc-out");
    for dir in [&bundle, &root, &out_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(bundle.join("config.json"), &config).unwrap();

    // The init expects its two log segments and its status file at fds 3, 4 and 5.
    let id = format!("shg-e2e-{}", std::process::id());
    let script = r#"exec runc --root "$1" run --bundle "$2" --preserve-fds 3 "$3" 3>>"$4/log.0" 4>>"$4/log.1" 5>"$4/status""#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, "sh"])
        .arg(&root)
        .arg(&bundle)
        .arg(&id)
        .arg(&out_dir);
    let run = run_captured(cmd, &gw.work, Duration::from_secs(60));
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .output();
    assert_eq!(run.code, Some(0), "runc run failed:\n{run}");

    let log = std::fs::read_to_string(out_dir.join("log.0")).unwrap();
    assert!(
        log.contains("hello-from-runc"),
        "the service's output is not in log.0: {log:?}"
    );
    let status = std::fs::read_to_string(out_dir.join("status")).unwrap();
    assert!(status.contains("\"code\":0"), "status file: {status:?}");
    assert_eq!(
        std::fs::read(gw.service_dir("hello").join("bundle/config.json")).unwrap(),
        config,
        "runc changed the bundle"
    );
}
