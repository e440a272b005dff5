//! Storage: every service's /data is its own size-capped volume; filling it gives the service
//! ENOSPC at its cap and nobody else notices; a stopped service keeps holding its storage.

use std::fs;

use crate::harness::Gateway;

const GATEWAY: &str = r#"
[capacity]
storage = "200MiB"
[reserve]
storage = "0"
"#;

fn manifest(name: &str, storage: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"acme\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\nuser = \"1000:1000\"\n\n\
         [resources]\nstorage = {storage}\n"
    )
}

/// Free bytes on the filesystem holding `path`, as `df` sees it.
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[test]
fn a_service_filling_its_volume_gets_enospc_at_its_cap() {
    let gw = Gateway::start_with_config(Some(GATEWAY));
    gw.install(
        "filler",
        &manifest("filler", r#"{ reserve = "32MiB", limit = "32MiB" }"#),
        &[],
    );
    gw.install("quiet", &manifest("quiet", r#"{ reserve = "16MiB" }"#), &[]);
    gw.wait_running("filler");
    gw.wait_running("quiet");
    let host_free = free_bytes(&gw.dir);

    // The service runs as uid 1000 and owns its volume's root.
    let fill = gw.shg(&[
        "exec",
        "filler",
        "--",
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/data/fill bs=1M count=64 2>&1; echo rc=$?; \
         ls -ln /data/fill",
    ]);
    assert!(
        fill.stdout.contains("No space left on device"),
        "the write stops at the cap with ENOSPC: {fill}"
    );
    assert!(fill.stdout.contains("rc=1"), "dd fails: {fill}");
    let size: u64 = fill
        .stdout
        .lines()
        .find(|l| l.starts_with("-rw") && l.contains("/data/fill"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("ls shows the file: {fill}"));
    assert!(
        size > 16 << 20 && size <= 32 << 20,
        "the volume holds up to its 32 MiB cap: {size}"
    );

    // The neighbour still writes, the gateway still answers, the host lost at most the cap.
    let write = gw.shg_ok(&[
        "exec",
        "quiet",
        "--",
        "/bin/sh",
        "-c",
        "echo still-writable > /data/x && cat /data/x",
    ]);
    assert!(write.stdout.contains("still-writable"), "{write}");
    assert_eq!(gw.svc("quiet").unwrap().state, "running");
    let used_on_host = host_free.saturating_sub(free_bytes(&gw.dir));
    assert!(
        used_on_host <= 34 << 20,
        "filling one volume took {used_on_host} bytes of the host"
    );

    // The data survives a restart of the service: it is a volume, not a scratch space.
    gw.shg_ok(&["restart", "filler"]);
    gw.wait_running("filler");
    let kept = gw.shg_ok(&["exec", "filler", "--", "/bin/ls", "/data"]);
    assert!(kept.stdout.contains("fill"), "{kept}");
}

#[test]
fn storage_stays_held_by_a_stopped_service_and_removing_makes_room() {
    let gw = Gateway::start_with_config(Some(GATEWAY));
    gw.install(
        "archive",
        &manifest("archive", r#"{ reserve = "120MiB" }"#),
        &[],
    );
    gw.wait_running("archive");
    gw.shg_ok(&["priority", "archive", "10"]);
    gw.shg_ok(&["stop", "archive"]);

    let big = gw.package("big", &manifest("big", r#"{ reserve = "100MiB" }"#), &[]);
    let big = big.to_str().unwrap();
    // Installed but stopped, `archive` still holds its 120 MiB: stopping frees no storage.
    let out = gw.shg(&["install", big, "--no-start"]);
    assert!(!out.ok(), "{out}");
    assert!(
        out.stderr
            .contains("storage: needs 100 MiB, only 80 MiB free of 200 MiB"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("remove `archive` (priority 10) with `shg remove archive`"),
        "the way out is a removal: {out}"
    );
    assert!(!gw.service_dir("big").exists(), "a refusal changes nothing");

    gw.shg_ok(&["remove", "archive"]);
    gw.shg_ok(&["install", big, "--no-start"]);
    let cap: serde_json::Value =
        serde_json::from_str(&gw.shg_ok(&["capacity", "--json"]).stdout).unwrap();
    assert_eq!(
        cap["reserved"]["storage"],
        100u64 << 20,
        "an installed, stopped service holds its storage"
    );
    assert_eq!(cap["reserved"]["memory"], 0);
}

/// The layer directories in the agent's shared store.
fn stored_layers(gw: &Gateway) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(gw.dir.join("layers/sha256"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn services_sharing_a_layer_store_it_once_and_the_last_removal_collects_it() {
    let gw = Gateway::start();
    let sleeper = |name: &str| {
        format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n\
             [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n"
        )
    };
    // The same root file system: one layer, whatever the manifests say.
    gw.install("one", &sleeper("one"), &[]);
    gw.install("two", &sleeper("two"), &[]);
    gw.wait_running("one");
    gw.wait_running("two");
    let shared = stored_layers(&gw);
    assert_eq!(shared.len(), 1, "{shared:?}");
    // Each root is an overlay of that layer, read-only inside the container.
    let out = gw.shg(&["exec", "one", "--", "sh", "-c", "touch /x 2>&1; echo rc=$?"]);
    assert!(out.stdout.contains("Read-only file system"), "{out}");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let overlays = mountinfo
        .lines()
        .filter(|l| l.contains(gw.dir.to_str().unwrap()) && l.contains(" overlay "))
        .count();
    assert_eq!(overlays, 2, "{mountinfo}");

    // A third service with one more file has a layer of its own.
    gw.install("three", &sleeper("three"), &[("extra", b"more", 0o644)]);
    assert_eq!(stored_layers(&gw).len(), 2);

    gw.shg_ok(&["remove", "one"]);
    assert_eq!(
        stored_layers(&gw).len(),
        2,
        "a layer still in use was collected"
    );
    gw.shg_ok(&["remove", "three"]);
    assert_eq!(stored_layers(&gw), shared);
    gw.shg_ok(&["remove", "two"]);
    assert!(stored_layers(&gw).is_empty(), "{:?}", stored_layers(&gw));
    // The agent's own tmpfs for the containers' state stays while it runs; nothing else.
    let left: Vec<_> = crate::harness::mounts_below(&gw.dir)
        .into_iter()
        .filter(|m| *m != gw.dir.join("containers"))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[test]
fn an_image_that_unpacks_past_the_storage_it_reserves_is_refused_from_its_headers() {
    let gw = Gateway::start();
    let manifest = "name = \"zeros\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n\n\
         [resources]\nstorage = { reserve = \"16MiB\" }\n";
    let dir = gw.package_dir("zeros", manifest, &[]);
    // 3000 MiB that take no disk here: a hole, which `shg pack` reads, and stores, as
    // 3000 MiB of zeros. They deflate to a few MB of package.
    fs::create_dir_all(dir.join("rootfs/srv")).unwrap();
    let truncated = std::process::Command::new("truncate")
        .args(["-s", "3000M"])
        .arg(dir.join("rootfs/srv/zeros"))
        .status()
        .expect("run truncate");
    assert!(truncated.success());
    let tar = gw.work.join("zeros.tar");
    let key = gw.trusted_key("e2e");
    gw.shg_ok(&[
        "pack",
        dir.to_str().unwrap(),
        "-o",
        tar.to_str().unwrap(),
        "--sign",
        key.to_str().unwrap(),
    ]);
    let packed = fs::metadata(&tar).unwrap().len();
    assert!(packed < 8 << 20, "the package is {packed} bytes");
    // The layer's header declares the whole 3000 MiB: counting stops right after it.
    let staging = gw.work.join("zeros-staging");
    let package = image::open(&tar, &staging).unwrap();
    let size = image::measure_layer(&package.layers[0], Some(16 << 20)).unwrap();
    assert!(!size.complete);
    assert!(
        (3000 << 20..3004 << 20).contains(&size.file_bytes),
        "the busybox files and 3000 MiB of zeros: {size:?}"
    );

    for args in [vec!["install", "--dry-run"], vec!["install"]] {
        let mut args = args;
        args.push(tar.to_str().unwrap());
        let out = gw.shg(&args);
        assert!(!out.ok(), "{out}");
        let said = out.stderr.clone();
        assert!(
            said.starts_with("error: cannot admit `zeros`: layer sha256:"),
            "{out}"
        );
        let mib: u64 = said
            .split("unpacks to at least ")
            .nth(1)
            .and_then(|rest| rest.split(" MiB").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no size in the refusal: {out}"));
        assert!((3000..3004).contains(&mib), "{out}");
        assert!(
            said.contains(
                "more than the 16 MiB of storage `zeros` reserves; raise `resources.storage` \
                 in shg-service.toml or ask the operator for a larger image allowance \
                 (HTTP 409, admission-refused)"
            ),
            "{out}"
        );
    }

    // Nothing was written: no layer (not even a partial one), no service, no upload left.
    assert!(stored_layers(&gw).is_empty(), "{:?}", stored_layers(&gw));
    assert_eq!(fs::read_dir(gw.dir.join("layers/tmp")).unwrap().count(), 0);
    assert!(!gw.service_dir("zeros").exists());
    assert_eq!(fs::read_dir(gw.dir.join("tmp")).unwrap().count(), 0);
    assert!(gw.ps().is_empty());
    let events = gw.events("zeros");
    assert_eq!(events.len(), 1, "the dry run journals nothing: {events:#?}");
    assert_eq!(events[0].0, "admission-refused");
    assert!(
        events[0]
            .1
            .contains("more than the 16 MiB of storage `zeros` reserves"),
        "{events:#?}"
    );
}
