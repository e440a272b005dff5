//! `shg demo`, the main job, as a new user runs it: the samples and the papers' services
//! (home automation, surveillance, VPN, game) built, signed, installed and running, the guide printed,
//! and the first command the guide shows working exactly as printed.
//!
//! The demo runs on a private state directory with the services' network switched off (its
//! `gateway.toml` written first), so it leaves the host's networking alone; the services' own
//! network tests (`network.rs`) exercise their published ports.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, mounts_below, run_captured, signal, wait_timeout, Out, SHG};

fn shg(
    socket: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
    scratch: &std::path::Path,
) -> Out {
    let mut cmd = Command::new(SHG);
    cmd.arg("--gateway").arg(socket).args(args);
    cmd.env_remove("SHG_TOKEN");
    if let Some(token) = token {
        cmd.env("SHG_TOKEN", token);
    }
    run_captured(cmd, scratch, Duration::from_secs(60))
}

#[test]
fn the_demo_hosts_the_samples_and_the_papers_services_and_its_guide_works() {
    let state = tempfile::Builder::new()
        .prefix("shg-demo-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = state.path();
    std::fs::write(dir.join("gateway.toml"), "[network]\nenabled = false\n").unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], testdata::free_port()));
    let out_path = dir.join("demo.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut demo = Command::new(SHG)
        .args(["demo", "--state-dir"])
        .arg(dir)
        .args(["--listen", &listen.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let socket = dir.join("api.sock");
    let printed = eventually("the demo's guide", Duration::from_secs(240), || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        assert!(
            demo.try_wait().unwrap().is_none(),
            "the demo stopped:\n{text}"
        );
        text.contains("SHG demo gateway is running").then_some(text)
    });

    let names = [
        "camera",
        "meter",
        "thermostat",
        "automation",
        "surveillance",
        "vpn",
        "arcade",
    ];
    for name in names {
        assert!(
            printed.contains(&format!("  {name:<13} installed from")),
            "{name} was not installed:\n{printed}"
        );
    }
    // Running, and the two services answering their health checks (their pages).
    eventually(
        "every service running and healthy",
        Duration::from_secs(60),
        || {
            let ps: Value =
                serde_json::from_str(&shg(&socket, None, &["ps", "--json"], dir).stdout).ok()?;
            let all = ps.as_array()?;
            names
                .iter()
                .all(|n| {
                    all.iter().any(|s| {
                        s["name"] == *n
                            && s["state"] == "running"
                            && (!["automation", "surveillance", "vpn", "arcade"].contains(n)
                                || s["health"] == "healthy")
                    })
                })
                .then_some(())
        },
    );
    let ps: Value =
        serde_json::from_str(&shg(&socket, None, &["ps", "--json"], dir).stdout).unwrap();
    let provider = |n: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()["provider"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(provider("automation"), "voltwise");
    assert_eq!(provider("surveillance"), "acme");
    assert_eq!(provider("vpn"), "workfromhome");
    assert_eq!(provider("arcade"), "arcade");

    // The guide's first provider command, exactly as printed (with acme's token).
    let tokens: Vec<(String, String)> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo-tokens.json")).unwrap())
            .unwrap();
    let acme = &tokens.iter().find(|(w, _)| w == "acme").unwrap().1;
    assert!(printed.contains("shg exec camera -- wget -qO- http://127.0.0.1:8080/"));
    let page = shg(
        &socket,
        Some(acme),
        &[
            "exec",
            "camera",
            "--",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ],
        dir,
    );
    assert!(page.ok() && page.stdout.contains("<"), "{page}");
    // voltwise sees its own services only.
    let voltwise = &tokens.iter().find(|(w, _)| w == "voltwise").unwrap().1;
    let theirs = shg(&socket, Some(voltwise), &["ps"], dir);
    assert!(
        theirs.ok() && theirs.stdout.contains("automation"),
        "{theirs}"
    );
    assert!(!theirs.stdout.contains("surveillance"), "{theirs}");

    // README's first example, exactly as written (its `logs -f` follows until cut off).
    let readme = include_str!("../../../../README.md");
    let block = readme
        .split_once("second terminal:\n\n```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("README's first example");
    let bin_dir = std::path::Path::new(SHG).parent().unwrap();
    let mut example = Command::new("timeout");
    example
        .args(["8", "bash", "-e", "-c", block])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("SHG_GATEWAY", &socket)
        .env_remove("SHG_TOKEN");
    let ran = run_captured(example, dir, Duration::from_secs(30));
    assert_eq!(
        ran.code,
        Some(124),
        "the example ended before its `logs -f`:\n{ran}"
    );
    assert!(
        ran.stdout.contains("camera") && ran.stdout.contains("<"),
        "{ran}"
    );
    assert!(ran.stdout.contains("reading "), "meter's log lines: {ran}");
    assert!(!ran.stderr.contains("error"), "{ran}");

    // Every service goes, then the demo stops, leaving nothing mounted.
    for name in names {
        let removed = shg(&socket, None, &["remove", name], dir);
        assert!(removed.ok(), "{removed}");
    }
    signal(demo.id() as i32, "TERM");
    let status = wait_timeout(&mut demo, Duration::from_secs(30));
    if status.is_none() {
        let _ = demo.kill();
        let _ = demo.wait();
        panic!("the demo did not stop within 30 s of SIGTERM");
    }
    let mounts = mounts_below(dir);
    assert!(mounts.is_empty(), "volumes left mounted: {mounts:?}");
}
