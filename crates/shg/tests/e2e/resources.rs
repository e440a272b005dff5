//! What the household's priority and the manifest's reservations do to a running service.

use std::fs;

use crate::harness::Gateway;

const RANKED: &str = r#"
name = "ranked"
version = "1.0.0"
provider = "acme"

[run]
command = ["/bin/sh", "-c", "sleep 100000 & wait"]

[resources]
cpu = { reserve = 0.5, limit = 1.0 }
memory = { reserve = "8MiB", limit = "32MiB" }
pids = { limit = 16 }
"#;

fn read(path: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

/// The init and every process under it.
fn processes(init: i32) -> Vec<i32> {
    let mut all = vec![init];
    let mut i = 0;
    while i < all.len() {
        let pid = all[i];
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    all
}

#[test]
fn a_priority_reorders_cpu_weight_and_oom_order_of_a_running_service() {
    let mut gw = Gateway::start();
    gw.install("ranked", RANKED, &[]);
    let svc = gw.wait_running("ranked");
    assert_eq!(
        svc.priority, 50,
        "a service nobody ranked has the default priority"
    );
    let cg = gw.cgroups_path("ranked");
    let shares = format!("/sys/fs/cgroup/cpu{cg}/cpu.shares");
    let soft = format!("/sys/fs/cgroup/memory{cg}/memory.soft_limit_in_bytes");
    // Weight in proportion to the reservation (0.5 core = 512), raised for priority 50.
    assert_eq!(read(&shares), "640");
    assert_eq!(
        read(&soft),
        (8 << 20).to_string(),
        "the memory reservation is the soft limit"
    );
    let init = svc.pid.unwrap();
    eventually_all_children(init, 2);
    for pid in processes(init) {
        assert_eq!(
            read(&format!("/proc/{pid}/oom_score_adj")),
            "650",
            "pid {pid}"
        );
    }

    let out = gw.shg_ok(&["priority", "ranked", "90"]);
    assert!(out.stdout.contains("priority of ranked is now 90"), "{out}");
    assert_eq!(gw.svc("ranked").unwrap().priority, 90);
    assert_eq!(read(&shares), "742", "a higher priority bursts first");
    for pid in processes(init) {
        assert_eq!(
            read(&format!("/proc/{pid}/oom_score_adj")),
            "450",
            "pid {pid} dies later now"
        );
    }
    assert!(gw
        .events("ranked")
        .iter()
        .any(|(kind, msg)| kind == "priority" && msg.contains("50 to 90")));

    let refused = gw.shg(&["priority", "ranked", "101"]);
    assert!(!refused.ok());
    assert!(refused.stderr.contains("out of range"), "{refused}");
    assert_eq!(
        gw.svc("ranked").unwrap().priority,
        90,
        "a refused change changes nothing"
    );

    // The priority survives a restart: the bundle is written from it.
    gw.shg_ok(&["restart", "ranked"]);
    gw.wait_running("ranked");
    assert_eq!(read(&shares), "742");
}

fn eventually_all_children(init: i32, want: usize) {
    crate::harness::eventually(
        "the service's processes to start",
        std::time::Duration::from_secs(10),
        || (processes(init).len() >= want).then_some(()),
    );
}
