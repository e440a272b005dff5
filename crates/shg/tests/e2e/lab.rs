//! The lab, end to end: `shg lab up` makes an emulated ISP with a controller and enrolled
//! gateways in namespaces, `status`, `exec` and a bulk transfer show it works and that the
//! access link is shaped, and `shg lab down` leaves nothing behind, also after its processes
//! were killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::console::Browser;
use crate::harness::{run_captured, Out, SHG};

/// A lab under a private directory with a name of this run's, downed when dropped even if
/// the test fails.
struct TestLab {
    name: String,
    dir: tempfile::TempDir,
}

impl TestLab {
    fn new(tag: &str) -> TestLab {
        let dir = tempfile::Builder::new()
            .prefix("shg-e2e-lab-")
            .tempdir_in("/tmp")
            .unwrap();
        TestLab {
            name: format!("e{}{tag}", std::process::id()),
            dir,
        }
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn lab_dir(&self) -> PathBuf {
        self.base().join(&self.name)
    }

    fn shg(&self, args: &[&str]) -> Out {
        self.shg_timeout(args, Duration::from_secs(120))
    }

    fn shg_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        let mut cmd = Command::new(SHG);
        cmd.arg("lab")
            .arg("--dir")
            .arg(self.base())
            .args(["--name", &self.name])
            .args(args)
            .env_remove("SHG_GATEWAY")
            .env_remove("SHG_CONTROLLER");
        let scratch = tempfile::tempdir().unwrap();
        run_captured(cmd, scratch.path(), timeout)
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.shg(args);
        assert!(out.ok(), "`shg lab {}` failed:\n{out}", args.join(" "));
        out
    }

    /// `shg ARGS…` on gateway `gw` as provider `provider` (a new token of its own), as that
    /// provider would run it through the gateway.
    fn as_provider(&self, gw: &str, provider: &str, args: &[&str]) -> std::process::Output {
        let token = self.ok(&[
            "exec",
            gw,
            "--",
            "shg",
            "token",
            "create",
            "--provider",
            provider,
        ]);
        self.with_token(gw, token.stdout.trim(), args)
    }

    /// `shg ARGS…` from gateway `gw` with `token` in SHG_TOKEN.
    fn with_token(&self, gw: &str, token: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(SHG);
        cmd.arg("lab")
            .arg("--dir")
            .arg(self.base())
            .args(["--name", &self.name, "exec", gw, "--", "shg"])
            .args(args)
            .env("SHG_TOKEN", token);
        cmd.output().unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"]).stdout).unwrap()
    }

    fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("shglab-{}-", self.name)))
            .map(String::from)
            .collect()
    }

    /// Processes whose command line mentions the lab's directory.
    fn processes(&self) -> Vec<String> {
        let dir = self.lab_dir().display().to_string();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if e.file_name().to_string_lossy().parse::<u32>().is_err() {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(&dir) {
                found.push(text);
            }
        }
        found
    }

    /// Asserts nothing of the lab is left: namespaces (and so their interfaces, bridges,
    /// tables and queues), processes, files, cgroups, mounts.
    fn assert_gone(&self, cgroups: &[String]) {
        assert_eq!(self.namespaces(), Vec::<String>::new(), "namespaces left");
        assert_eq!(self.processes(), Vec::<String>::new(), "processes left");
        assert!(
            !self.lab_dir().exists(),
            "{} left",
            self.lab_dir().display()
        );
        let host_links = Command::new("ip").args(["-br", "link"]).output().unwrap();
        let host_links = String::from_utf8_lossy(&host_links.stdout);
        for l in host_links.lines() {
            let name = l.split_whitespace().next().unwrap_or_default();
            assert!(
                !["wan0", "lan0"].contains(&name.split('@').next().unwrap_or_default()),
                "a lab interface reached the host: {l}"
            );
        }
        let tables = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains("shglab"),
            "the lab's NAT table reached the host"
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(&self.lab_dir().display().to_string()),
            "mounts left under the lab"
        );
        for cg in cgroups {
            let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|h| h.path().join(cg))
                .chain([Path::new("/sys/fs/cgroup").join(cg)])
                .filter(|p| p.exists())
                .collect();
            assert!(left.is_empty(), "cgroups left: {left:?}");
        }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.lab_dir().join("lab.json").exists() {
            let out = self.shg(&["down"]);
            if !out.ok() && !std::thread::panicking() {
                panic!("shg lab down failed:\n{out}");
            }
        }
    }
}

fn cgroups_of(status: &Value) -> Vec<String> {
    status["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            // The agent's cgroup parent is named from its state directory, as lab's plan has it.
            let dir =
                PathBuf::from(status["dir"].as_str().unwrap()).join(g["name"].as_str().unwrap());
            let hash = dir
                .as_os_str()
                .as_encoded_bytes()
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                }) as u32;
            format!("shg-{hash:08x}")
        })
        .collect()
}

#[test]
fn a_lab_of_three_adsl_gateways_in_two_regions_comes_up_is_shaped_and_goes_without_a_trace() {
    let lab = TestLab::new("a");
    let up = lab.ok(&["up", "--gateways", "3", "--regions", "2", "--link", "adsl"]);
    assert!(
        up.stdout.contains("netem"),
        "the lab says what it leaves out:\n{up}"
    );

    let status = lab.status();
    let gateways = status["gateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 3);
    let regions: Vec<&str> = gateways
        .iter()
        .map(|g| g["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["r1", "r2", "r1"]);
    for g in gateways {
        assert_eq!(g["controller"], "online", "{status:#}");
        assert_eq!(g["link"], "adsl");
        // A few hundred of them must fit on a 24 GiB machine: well under 64 MiB each.
        let rss = g["rss_kib"].as_u64().unwrap();
        assert!(rss < 64 * 1024, "an agent holds {rss} KiB");
    }
    // The controller's own view, by label.
    let ctl = lab.ok(&[
        "exec",
        "gw1",
        "--",
        "shg",
        "fleet",
        "gateways",
        "--selector",
        "region=r1",
        "--json",
    ]);
    let rows: Vec<Value> = serde_json::from_str(&ctl.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{ctl}");

    let ps = lab.ok(&["exec", "gw1", "--", "shg", "ps"]);
    assert!(ps.stdout.contains("no services"), "{ps}");
    let addr = lab.ok(&["exec", "gw1/lan", "--", "ip", "addr"]);
    assert!(addr.stdout.contains("192.168.1.2/24"), "{addr}");
    let wan = lab.ok(&["exec", "gw2", "--", "ip", "addr"]);
    assert!(wan.stdout.contains("100.66.0.2/16"), "{wan}");

    // Downlink: the router sends to a household device through the gateway's NAT for 3 s.
    let wan_ns = format!("shglab-{}-wan", lab.name);
    let port = "5201";
    let mut server = Command::new("ip")
        .args(["netns", "exec", &wan_ns, "iperf3", "-s", "-1", "-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (scripts/setup.sh installs it)");
    std::thread::sleep(Duration::from_millis(500));
    let client = lab.shg(&[
        "exec",
        "gw1/lan",
        "--",
        "iperf3",
        "-c",
        "100.64.0.1",
        "-p",
        port,
        "-R",
        "-t",
        "3",
        "-J",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(client.ok(), "{client}");
    let result: Value = serde_json::from_str(&client.stdout).unwrap();
    let bits = result["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    // 8 Mbit/s nominal: near it, and nowhere near the gigabits of an unshaped veth.
    assert!(
        (4_000_000.0..12_000_000.0).contains(&bits),
        "ADSL downlink gave {bits} bit/s"
    );

    let cgroups = cgroups_of(&status);
    let down = lab.ok(&["down"]);
    assert!(down.stdout.contains("down"), "{down}");
    lab.assert_gone(&cgroups);
    // Once more: nothing to do, and says so.
    assert!(lab.ok(&["down"]).stdout.contains("no lab"));
}

/// `shg lab demo`: the papers' demonstration over three gateways in two regions, every step
/// checked by the demo itself; here, that each step ran and said what it saw.
#[test]
fn the_papers_demonstration_runs_end_to_end_over_a_lab() {
    let lab = TestLab::new("d");
    lab.ok(&["up", "--gateways", "3", "--regions", "2", "--link", "vdsl"]);
    let status = lab.status();
    let demo = lab.shg_timeout(&["demo"], Duration::from_secs(900));
    assert!(demo.ok(), "{demo}");
    for said in [
        "[1] The operator's gateways are enrolled",
        "ok: probe 1.0 runs on gw1, gw3 and nowhere else",
        "ok: the household sees meter running, ranked 90",
        "its logs on gw1 say `probe 1.0 alive`",
        "ok: killed; running again with a new process, its restart counted",
        "ok: aborted after the canary",
        "every gateway of r1 runs probe 1.0 again",
        "ok: gw3 is offline; it keeps running probe 1.0",
        "the cut-off gateway still runs 1.0",
        "caught up in",
        "The demonstration ran to the end.",
    ] {
        assert!(demo.stdout.contains(said), "missing `{said}`:\n{demo}");
    }
    // The demo leaves its services: the lab shows them, and `down` still leaves nothing.
    let after = lab.status();
    let on = |name: &str| -> Vec<String> {
        after["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap()["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(on("gw1"), ["probe"]);
    assert_eq!(on("gw2"), ["meter"]);
    let cgroups = cgroups_of(&status);
    lab.ok(&["down"]);
    lab.assert_gone(&cgroups);
}

#[test]
fn down_after_the_labs_processes_were_killed_still_leaves_nothing() {
    let lab = TestLab::new("k");
    lab.ok(&["up", "--gateways", "2", "--link", "20/5"]);
    let status = lab.status();
    let mut pids: Vec<i64> = status["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["pid"].as_i64().unwrap())
        .collect();
    pids.push(status["controller_pid"].as_i64().unwrap());
    for pid in &pids {
        let ok = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let after = lab.status();
    assert!(after["gateways"][0]["pid"].is_null(), "{after:#}");
    assert_eq!(after["gateways"][0]["controller"], "unknown");
    let cgroups = cgroups_of(&status);
    lab.ok(&["down"]);
    lab.assert_gone(&cgroups);
}

#[test]
fn a_lab_taken_by_something_else_is_refused_before_anything_is_made() {
    let lab = TestLab::new("f");
    // Something else holds the name of the second gateway's namespace: `up` refuses before
    // making anything, and says how to get out.
    let taken = format!("shglab-{}-gw2", lab.name);
    let made = Command::new("ip")
        .args(["netns", "add", &taken])
        .status()
        .unwrap();
    assert!(made.success());
    let out = lab.shg(&["up", "--gateways", "2"]);
    let _ = Command::new("ip").args(["netns", "del", &taken]).status();
    assert!(!out.ok(), "{out}");
    assert!(
        out.stderr.contains(&taken) && out.stderr.contains("ip netns del"),
        "{out}"
    );
    lab.assert_gone(&[]);
}

#[test]
fn a_lab_that_fails_half_way_is_undone() {
    // Past the namespaces and links of both gateways, the controller started, gw1's agent
    // started: the failure comes with gw2's agent.
    for fail_at in [6, 12, 19] {
        let lab = TestLab::new(&format!("h{fail_at}"));
        let mut cmd = Command::new(SHG);
        cmd.arg("lab")
            .arg("--dir")
            .arg(lab.base())
            .args([
                "--name",
                &lab.name,
                "up",
                "--gateways",
                "2",
                "--regions",
                "2",
            ])
            .env("SHG_LAB_FAIL_AT", fail_at.to_string());
        let scratch = tempfile::tempdir().unwrap();
        let out = run_captured(cmd, scratch.path(), Duration::from_secs(120));
        assert!(!out.ok(), "{out}");
        assert!(
            out.stderr.contains("everything it made was undone"),
            "{out}"
        );
        let cgroups = cgroups_of(&serde_json::json!({
            "dir": lab.lab_dir().display().to_string(),
            "gateways": [{"name": "gw1"}, {"name": "gw2"}],
        }));
        lab.assert_gone(&cgroups);
    }
}

/// A process in a lab namespace, ended by its PID when dropped.
struct InLab(std::process::Child);

impl Drop for InLab {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_netns(ns: &str, args: &[&str], log: &Path) -> InLab {
    InLab(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}")),
    )
}

/// Packages `binary` (stripped, as `/bin/NAME`) with `manifest` and `extra` files, signs it
/// with a new key of `provider`'s, and has the operator trust the key, publish and approve the
/// package and deploy it at once to the gateways `to` names (`--selector K=V` or
/// `--gateways ID,…`).
fn ship(
    lab: &TestLab,
    work: &Path,
    (provider, service): (&str, &str),
    binary: &Path,
    manifest: &str,
    extra: &[(&str, &Path)],
    to: [&str; 2],
) {
    let pkg = work.join("pkg");
    std::fs::create_dir_all(pkg.join("rootfs/bin")).unwrap();
    let strip = Command::new("strip")
        .arg("-o")
        .arg(pkg.join("rootfs/bin").join(service))
        .arg(binary)
        .status()
        .unwrap();
    assert!(strip.success());
    for (path, from) in extra {
        let to = pkg.join("rootfs").join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    std::fs::write(pkg.join("shg-service.toml"), manifest).unwrap();
    let shg = |args: &[&str]| {
        let out = Command::new(SHG).args(args).output().unwrap();
        assert!(out.status.success(), "shg {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dir = work.display().to_string();
    shg(&["key", "gen", provider, "--dir", &dir]);
    let tar = work.join(format!("{service}.tar")).display().to_string();
    shg(&["pack", &pkg.display().to_string(), "-o", &tar]);
    let key = work.join(format!("{provider}.key")).display().to_string();
    shg(&["sign", &tar, "--key", &key]);
    let public = work.join(format!("{provider}.pub")).display().to_string();
    let fleet = |args: &[&str]| {
        let mut all = vec!["exec", "gw1", "--", "shg", "fleet"];
        all.extend_from_slice(args);
        lab.ok(&all).stdout
    };
    fleet(&[
        "trust",
        "add",
        "--provider",
        provider,
        &public,
        "--services",
        service,
    ]);
    fleet(&["publish", &tar]);
    fleet(&["approve", service, "1.0.0"]);
    let target = format!("{service}:1.0.0");
    fleet(&[
        "deploy", &target, to[0], to[1], "--waves", "100%", "--soak", "0s",
    ]);
}

/// streamco's `vod` package, as shipped (`services/vod/shg-service.toml`, its origin and
/// tracker pointed at the lab's WAN host), on three lab gateways in two regions behind ADSL
/// links, installed by a fleet deployment: each household plays the title from its own
/// gateway, byte for byte; a gateway fetches from the gateway of its own region and not from
/// the other region (the one gateway alone in its region may); its provider reads where the
/// bytes came from through the gateway.
#[test]
fn streamco_vod_on_three_lab_gateways_plays_everywhere_from_the_own_region_first() {
    let lab = TestLab::new("v");
    lab.ok(&["up", "--gateways", "3", "--regions", "2", "--link", "adsl"]);
    let wan = format!("shglab-{}-wan", lab.name);
    let work = lab.base().join("vod");
    std::fs::create_dir_all(work.join("titles")).unwrap();
    let vod = PathBuf::from(SHG).with_file_name("vod");
    assert!(
        vod.exists(),
        "{} is missing: `cargo build --workspace` builds it",
        vod.display()
    );
    let vod_s = vod.display().to_string();
    // 1 MiB at 0.5 Mbit/s: 17 s of picture.
    let film = testdata::scrambled(1 << 20);
    std::fs::write(work.join("titles/film.mp4"), &film).unwrap();

    // The provider's tracker and origin on the lab's WAN host (the regions' router).
    let (tracker, origin) = ("http://100.64.0.1:6969", "http://100.64.0.1:8080");
    let _tracker = in_netns(
        &wan,
        &[
            &vod_s,
            "tracker",
            "--listen",
            "0.0.0.0:6969",
            "--region",
            "100.65.0.0/16=r1",
            "--region",
            "100.66.0.0/16=r2",
        ],
        &work.join("tracker.log"),
    );
    let titles = work.join("titles").display().to_string();
    // The origin, also seeding over BitTorrent (2 Mbit/s) when `seeding`.
    let start_origin = |seeding: bool, log: &str| {
        let mut args = vec![
            vod_s.as_str(),
            "origin",
            "--listen",
            "0.0.0.0:8080",
            "--titles",
            &titles,
            "--public-url",
            origin,
            "--tracker",
            tracker,
            "--bitrate",
            "film.mp4=500000",
        ];
        if seeding {
            args.extend([
                "--seed-listen",
                "0.0.0.0:6882",
                "--seed-upload-bps",
                "250000",
            ]);
        }
        in_netns(&wan, &args, &work.join(log))
    };
    let mut origin_proc = start_origin(true, "origin.log");
    let answers = |url: &str| {
        Command::new("ip")
            .args(["netns", "exec", &wan, "curl", "-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success())
    };
    crate::harness::eventually(
        "the tracker and the origin",
        Duration::from_secs(30),
        || {
            (answers(&format!("{tracker}/region")) && answers(&format!("{origin}/catalog")))
                .then_some(())
        },
    );

    // The package: the shipped manifest, a static `vod` and the CA bundle librqbit wants.
    let shipped = include_str!("../../../../services/vod/shg-service.toml");
    let manifest = shipped
        .replace("http://origin.streamco.example:8080", origin)
        .replace("http://tracker.streamco.example:6969", tracker);
    assert!(manifest.contains(origin) && manifest.contains(tracker));
    ship(
        &lab,
        &work,
        ("streamco", "vod"),
        &vod,
        &manifest,
        &[(
            "etc/ssl/certs/ca-certificates.crt",
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
        )],
        ["--selector", "link=adsl"],
    );
    for gw in ["gw1", "gw2", "gw3"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !lab
            .shg(&[
                "exec",
                &format!("{gw}/lan"),
                "--",
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "http://192.168.1.1:8090/metrics",
            ])
            .ok()
        {
            if std::time::Instant::now() > deadline {
                let ps = lab.shg(&["exec", gw, "--", "shg", "ps"]);
                let events = lab.shg(&["exec", gw, "--", "shg", "events"]);
                let deployments = lab.shg(&["exec", "gw1", "--", "shg", "fleet", "deployments"]);
                panic!("vod never answered on {gw}'s LAN\n{ps}\n{events}\n{deployments}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Its provider's view, through the gateway with streamco's own token.
    let metrics = |gw: &str| -> Value {
        let out = lab.as_provider(gw, "streamco", &["metrics", "vod"]);
        assert!(out.status.success(), "shg metrics vod on {gw}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let play = |gw: &str| {
        let played = work.join(format!("played-{gw}"));
        lab.ok(&[
            "exec",
            &format!("{gw}/lan"),
            "--",
            "curl",
            "-sf",
            "--max-time",
            "120",
            "-o",
            &played.display().to_string(),
            "http://192.168.1.1:8090/watch/film.mp4",
        ]);
        let got = std::fs::read(&played).unwrap();
        assert!(
            got == film,
            "{gw}'s household got {} bytes that differ from the title's {}",
            got.len(),
            film.len()
        );
        let m = metrics(gw);
        eprintln!("{gw}: {m}");
        m
    };

    // gw1's household plays first; gw1 keeps the whole title. Then the origin stops seeding
    // (a web seed only): what the others get over BitTorrent, they get from gateways.
    let gw1 = play("gw1");
    crate::harness::eventually(
        "gw1 to hold the whole title",
        Duration::from_secs(60),
        || (metrics("gw1")["titles"][0]["have_bytes"] == film.len()).then_some(()),
    );
    drop(origin_proc);
    origin_proc = start_origin(false, "origin-2.log");
    crate::harness::eventually("the origin again", Duration::from_secs(30), || {
        answers(&format!("{origin}/catalog")).then_some(())
    });
    // Then gw3 (gw1's region), then gw2 (alone in the other region).
    let sources = [("gw1", gw1), ("gw3", play("gw3")), ("gw2", play("gw2"))];
    let (_, gw3) = &sources[1];
    assert!(
        gw3["same_region_bytes"].as_u64().unwrap_or(0) > 0,
        "gw3 got nothing from gw1, its region's gateway: {gw3}"
    );
    // gw1 and gw3 share r1 and fetch nothing across; gw2, alone in r2, is given r1's
    // gateways by the tracker and may.
    for (gw, m) in &sources[..2] {
        assert_eq!(
            m["other_region_bytes"], 0,
            "{gw} fetched across regions: {m}"
        );
    }

    // streamco's fleet view at the controller: the same figures per gateway, and summed.
    // (A journaled change makes each gateway report at once rather than at its heartbeat.)
    for gw in ["gw1", "gw2", "gw3"] {
        lab.ok(&["exec", gw, "--", "shg", "priority", "vod", "51"]);
    }
    let token = lab.ok(&[
        "exec",
        "gw1",
        "--",
        "shg",
        "fleet",
        "token",
        "create",
        "--provider",
        "streamco",
    ]);
    // The counters only grow: the fleet view is current once it holds at least what each
    // gateway showed right after its play.
    let direct: u64 = sources
        .iter()
        .map(|(_, m)| m["same_region_bytes"].as_u64().unwrap_or(0))
        .sum();
    let fleet_view = || -> Option<Value> {
        let out = lab.with_token("gw1", token.stdout.trim(), &["fleet", "services", "--json"]);
        let all: Value = serde_json::from_slice(&out.stdout).ok()?;
        let vod = all.as_array()?.iter().find(|s| s["name"] == "vod")?.clone();
        let full = vod["figures"]
            .as_object()?
            .values()
            .all(|f| f["same_region_bytes"].is_u64());
        // A gateway's report carries the figures the agent last read inside the service,
        // which may be from before its play, or from while it played (the play counted, its
        // bytes not yet): wait for those of every whole play.
        let played = vod["figures"]
            .as_object()?
            .values()
            .all(|f| f["plays"].as_u64() == Some(1));
        let same_region: u64 = vod["figures"]
            .as_object()?
            .values()
            .filter_map(|f| f["same_region_bytes"].as_u64())
            .sum();
        (vod["figures"].as_object()?.len() == 3 && full && played && same_region >= direct)
            .then_some(vod)
    };
    let vod = crate::harness::eventually(
        "streamco's figures from the 3 gateways",
        Duration::from_secs(30),
        fleet_view,
    );
    let summed: u64 = vod["figures"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["same_region_bytes"].as_u64().unwrap())
        .sum();
    assert!(summed > 0, "{vod}");
    assert_eq!(
        vod["figures_total"]["same_region_bytes"].as_f64(),
        Some(summed as f64),
        "{vod}"
    );
    // The operator's view has the service, not its provider's figures.
    let operator = lab.ok(&["exec", "gw1", "--", "shg", "fleet", "services", "--json"]);
    assert!(!operator.stdout.contains("same_region_bytes"), "{operator}");
    drop(origin_proc);
    lab.ok(&["down"]);
}

/// arcade's maze, as shipped (its lobby on the lab's WAN host), deployed by the fleet to two
/// lab gateways: each hosts its half. A player in headless Chromium in the first household
/// walks east with the arrow key into the second gateway's half, and back; the second
/// household's browser sees the visitor arrive; the player's own page never shows a jump.
#[test]
fn arcade_maze_split_over_two_lab_gateways_hands_a_chromium_player_across_the_border() {
    let lab = TestLab::new("g");
    lab.ok(&["up", "--gateways", "2", "--link", "adsl"]);
    let wan = format!("shglab-{}-wan", lab.name);
    let work = lab.base().join("arcade");
    std::fs::create_dir_all(&work).unwrap();
    let arcade = PathBuf::from(SHG).with_file_name("arcade");
    assert!(
        arcade.exists(),
        "{} is missing: `cargo build --workspace` builds it",
        arcade.display()
    );
    let lobby = "http://100.64.0.1:7100";
    let _lobby = in_netns(
        &wan,
        &[
            &arcade.display().to_string(),
            "lobby",
            "--parts",
            "2",
            "--listen",
            "0.0.0.0:7100",
        ],
        &work.join("lobby.log"),
    );
    let shipped = include_str!("../../../../services/arcade/shg-service.toml");
    let manifest = shipped.replace(
        r#"command = ["/bin/arcade", "gateway", "--key-file", "/data/gateway.key"]"#,
        &format!(
            r#"command = ["/bin/arcade", "gateway", "--key-file", "/data/gateway.key", "--lobby", "{lobby}"]"#
        ),
    );
    assert!(manifest.contains(lobby));
    let to = ["--selector", "link=adsl"];
    ship(
        &lab,
        &work,
        ("arcade", "arcade"),
        &arcade,
        &manifest,
        &[],
        to,
    );

    // Which half each gateway got: its household's page says.
    let world = |gw: &str| -> Option<Value> {
        let out = lab.shg(&[
            "exec",
            &format!("{gw}/lan"),
            "--",
            "curl",
            "-sf",
            "-m",
            "5",
            "http://192.168.1.1:8097/world",
        ]);
        serde_json::from_str(&out.stdout).ok()
    };
    let mut part = std::collections::BTreeMap::new();
    for gw in ["gw1", "gw2"] {
        let began = std::time::Instant::now();
        let w = crate::harness::eventually(
            &format!("the maze on {gw}, both halves shown"),
            Duration::from_secs(90),
            || {
                if began.elapsed() > Duration::from_secs(80) {
                    let logs = lab.as_provider(gw, "arcade", &["logs", "arcade"]);
                    let ps = lab.shg(&["exec", gw, "--", "shg", "ps"]);
                    let events = lab.shg(&["exec", gw, "--", "shg", "events"]);
                    let deployments =
                        lab.shg(&["exec", "gw1", "--", "shg", "fleet", "deployments"]);
                    panic!(
                        "{ps}\n{events}\n{deployments}\n{}\n{}",
                        String::from_utf8_lossy(&logs.stdout),
                        std::fs::read_to_string(work.join("lobby.log")).unwrap_or_default()
                    );
                }
                let w = world(gw)?;
                w["parts"]
                    .as_array()?
                    .iter()
                    .all(|p| p["shown"] == true)
                    .then_some(w)
            },
        );
        part.insert(w["part"].as_u64().unwrap(), gw);
    }
    let (west, east) = (part[&0], part[&1]);
    let border = world(east).unwrap()["parts"][1]["from"].as_i64().unwrap();
    let household = |gw: &str| format!("shglab-{}-{gw}-lan", lab.name);

    // Each household plays from its own gateway's page.
    let play = |gw: &str, name: &str| {
        let b = Browser::start_in(Some(&household(gw)));
        b.go("http://192.168.1.1:8097/");
        b.type_into("#name", name);
        b.click("#join button");
        b.wait("joined", "window.me && window.me.id");
        b
    };
    let ann = play(west, "ann");
    let bob = play(east, "bob");
    let id = ann.js("return window.me.id;").as_str().unwrap().to_string();
    // The right arrow, as a keyboard sends it.
    ann.type_into("#name", "\u{E014}");
    bob.wait(
        "ann in the east half, on bob's page",
        &format!("window.world && window.world.players.some(p => p.id === '{id}' && p.x >= {border} + 2)"),
    );
    // Her own page shows her across too (its east half comes from the east gateway's view,
    // a poll behind bob's page) before she turns back.
    ann.wait(
        "ann in the east half, on her own page",
        &format!("window.track.some(s => s.x !== null && s.x >= {border} + 2)"),
    );
    ann.type_into("#name", "\u{E012}"); // left: home again
    ann.wait(
        "ann back in the west half",
        &format!("window.world.players.some(p => p.id === '{id}' && p.x <= {border} - 3)"),
    );

    // What ann's page showed of her, sighting by sighting: never a jump, never gone long.
    let track = ann.js("return window.track.filter(s => s.x !== null);");
    let track = track.as_array().unwrap();
    assert!(
        track.iter().any(|s| s["x"].as_i64() >= Some(border + 2)),
        "never crossed"
    );
    for pair in track.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let moved = (b["x"].as_i64().unwrap() - a["x"].as_i64().unwrap()).abs()
            + (b["y"].as_i64().unwrap() - a["y"].as_i64().unwrap()).abs();
        let moves = b["seq"].as_i64().unwrap() - a["seq"].as_i64().unwrap();
        assert!(
            moves >= 0 && moved <= moves,
            "a jump on ann's page: {a} then {b}"
        );
    }
    let hidden = track.iter().filter(|s| s["seen"] == false).count();
    eprintln!(
        "ann: {} sightings, {hidden} with ann in no half (hand-over in flight)",
        track.len()
    );
    assert!(
        hidden * 10 <= track.len(),
        "ann was out of sight too often: {hidden} of {}",
        track.len()
    );
    drop((ann, bob));
    lab.ok(&["down"]);
}
