//! Update figures (issue 5), on a real agent, a real registry and real images:
//!
//! 1. bytes downloaded to update a service whose new version changes one small layer, against
//!    the full image size (two-layer images built with umoci, pushed with skopeo to Debian's
//!    docker-registry on loopback, signed with `shg sign`, pulled by `shg install`/`update`);
//! 2. time from `shg update` to the new version healthy;
//! 3. time from the new version failing (its `exited` event in the journal) to the old version
//!    healthy again after the agent's own rollback (seen in `shg ps`).
//!
//! `SHG_BENCH_QUICK=1` runs the same steps with one update and rollback and two services on
//! the shared base.
//! Needs root, busybox-static, docker-registry, skopeo and umoci (scripts/setup.sh).
//! Run: `cargo bench -p shg --bench update`.

#[allow(dead_code)]
mod common;
use common::scaled;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("update bench: needs root (it starts containers); skipped");
        return;
    }
    common::announce("update");
    let runs = scaled(5, 1);
    let shg = PathBuf::from(env!("CARGO_BIN_EXE_shg"));
    let state = tempfile::Builder::new()
        .prefix("shg-bench-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::write(
        state.path().join("gateway.toml"),
        "[network]\nenabled = false\n",
    )
    .unwrap();
    let work = state.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let agent = Agent::start(&shg, state.path(), &work);
    let (key, public) = common::bench_key(&shg, &work);
    agent.shg(&[
        "trust",
        "add",
        "--provider",
        "bench",
        public.to_str().unwrap(),
    ]);

    let (downloaded, full, shared) = layer_saving(&agent, state.path(), &work, &key);
    println!("update of one small layer (registry pull, two-layer image):");
    println!(
        "  downloaded {:>10} bytes of a {:>10} byte image ({:.2} %)",
        downloaded,
        full,
        downloaded as f64 * 100.0 / full as f64
    );
    let (services, store, copies) = shared;
    println!("disk for {services} services on one base layer (the gateway's layer store):");
    println!(
        "  shared store {:>10} bytes against {:>10} bytes as separate copies ({:.1}x)",
        store,
        copies,
        copies as f64 / store as f64
    );

    // What the figures are about: a failure here is a regression, not noise.
    assert!(
        downloaded > 0 && downloaded < full / 2,
        "the update of one small layer downloaded {downloaded} bytes of a {full}-byte image: the CLI's blob cache fetched layers it already held again (or nothing at all)"
    );
    assert!(
        store < copies,
        "the layer store takes {store} bytes for {services} services on one base, no less than {copies} bytes of separate roots: the base layer is not shared"
    );

    let busybox = samples::find_busybox().expect("busybox-static");
    let health = "[health]\nexec = [\"/bin/sh\", \"-c\", \"test -f /tmp/ok\"]\ninterval = \"1s\"\nretries = 1\n";
    let release = |version: &str, body: &str| {
        let dir = work.join(format!("timed-{version}"));
        samples::busybox_rootfs(&dir.join("rootfs"), &busybox).unwrap();
        std::fs::write(
            dir.join("shg-service.toml"),
            format!(
                "name = \"timed\"\nversion = \"{version}\"\nprovider = \"bench\"\n\n[run]\n\
                 command = [\"/bin/sh\", \"-c\", \"{body}\"]\n\n{health}"
            ),
        )
        .unwrap();
        let tar = work.join(format!("timed-{version}.tar"));
        agent.shg(&[
            "pack",
            dir.to_str().unwrap(),
            "-o",
            tar.to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
        ]);
        tar
    };
    let serve = "touch /tmp/ok; exec sleep 100000";
    let good = [release("1.0.0", serve), release("2.0.0", serve)];
    let bad = release("9.0.0", "sleep 1; exit 1");
    agent.shg(&["install", good[0].to_str().unwrap()]);
    agent.wait(|s| s["health"] == "healthy", "healthy");

    let mut to_healthy = Vec::new();
    let mut to_old = Vec::new();
    for run in 0..runs {
        // 1.0.0 → 2.0.0 (or back): time until the new version is healthy.
        let (next, version) = if run % 2 == 0 {
            (&good[1], "2.0.0")
        } else {
            (&good[0], "1.0.0")
        };
        let t = Instant::now();
        agent.shg(&["update", "timed", next.to_str().unwrap(), "--window", "2s"]);
        agent.wait(
            |s| s["version"] == version && s["health"] == "healthy",
            "updated",
        );
        to_healthy.push(t.elapsed().as_secs_f64() * 1000.0);
        agent.wait_event("update-done", run + 1);

        // A version that exits a second after starting: from its exit (the journal's
        // `exited` event) to the old version started and healthy again.
        let since = agent.last_event_id();
        agent.shg(&["update", "timed", bad.to_str().unwrap(), "--window", "20s"]);
        agent.wait(
            |s| s["version"] == version && s["health"] == "healthy",
            "rolled back",
        );
        let healthy_at = now_ms();
        let events = agent.events_since(since);
        let failed_at = events
            .iter()
            .find(|e| e["kind"] == "exited")
            .and_then(|e| e["time_ms"].as_u64())
            .expect("the bad version's exit");
        to_old.push((healthy_at - failed_at) as f64);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("update and rollback times ({runs} runs, medians; health checked every 1s):");
    println!(
        "  `shg update` → new version healthy            {:>8.0} ms",
        median(to_healthy)
    );
    println!(
        "  new version exits → old version healthy       {:>8.0} ms",
        median(to_old)
    );
    agent.shg(&["remove", "timed"]);
    agent.stop();
}

/// Installs 1.0 of a two-layer image from a registry, updates it to 2.0 (which changes only
/// the small top layer), and returns (bytes the update downloaded, bytes of the whole image,
/// (N, bytes of the layer store, bytes of N separate roots) for N services on one base).
fn layer_saving(
    agent: &Agent,
    state: &Path,
    work: &Path,
    key: &Path,
) -> (u64, u64, (usize, u64, u64)) {
    let registry = Registry::start(work);
    let busybox = samples::find_busybox().expect("busybox-static");
    let build = work.join("umoci");
    std::fs::create_dir_all(&build).unwrap();
    let umoci = |args: &[&str]| {
        let ok = Command::new("umoci")
            .args(args)
            .current_dir(&build)
            .stdout(Stdio::null())
            .status()
            .expect("umoci (scripts/setup.sh installs it)")
            .success();
        assert!(ok, "umoci {args:?} failed");
    };
    umoci(&["init", "--layout", "layout"]);
    umoci(&["new", "--image", "layout:base"]);
    umoci(&["unpack", "--rootless", "--image", "layout:base", "bundle"]);
    samples::busybox_rootfs(&build.join("bundle/rootfs"), &busybox).unwrap();
    // Some bulk in the base, as a real service's libraries would be.
    let noise: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(build.join("bundle/rootfs/lib.bin"), &noise).unwrap();
    umoci(&["repack", "--image", "layout:base", "bundle"]);
    let image = |tag: &str, name: &str, version: &str| {
        // The base plus one small layer of its own.
        let bundle = format!("bundle-{tag}");
        umoci(&["unpack", "--rootless", "--image", "layout:base", &bundle]);
        std::fs::write(
            build.join(&bundle).join("rootfs/app.txt"),
            format!("{name} {version}\n"),
        )
        .unwrap();
        let image_tag = format!("layout:{tag}");
        umoci(&["repack", "--image", &image_tag, &bundle]);
        let manifest = format!(
            "name = \"{name}\"\nversion = \"{version}\"\nprovider = \"bench\"\n\n\
             [run]\ncommand = [\"/bin/sh\", \"-c\", \"cat /app.txt; exec sleep 100000\"]\n"
        );
        umoci(&[
            "config",
            "--image",
            &image_tag,
            "--config.label",
            &format!("org.shg.manifest={manifest}"),
        ]);
    };
    let push = |tag: &str, repo: &str, remote_tag: &str| {
        let reference = format!("{}/bench/{repo}:{remote_tag}", registry.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", build.join("layout").display()))
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        agent.shg(&["sign", &reference, "--key", key.to_str().unwrap()]);
        reference
    };
    for version in ["1.0", "2.0"] {
        image(version, "layered", &format!("{version}.0"));
        push(version, "layered", version);
    }
    let cache = work.join("cache");
    let blobs = cache.join("shg/blobs/sha256");
    agent.shg_cached(
        &["install", &format!("{}/bench/layered:1.0", registry.addr)],
        &cache,
    );
    let before = dir_bytes(&blobs);
    agent.shg_cached(&["update", "layered", "2.0", "--window", "1s"], &cache);
    let downloaded = dir_bytes(&blobs) - before;
    let d: Value = serde_json::from_str(&agent.shg(&["inspect", "layered", "--json"])).unwrap();
    assert_eq!(d["version"], "2.0.0");
    let full = registry.image_bytes("bench/layered", "2.0");
    agent.shg(&["remove", "layered"]);

    // N services, each the base plus a small layer of its own, pulled by the gateway.
    let n = scaled(5, 2);
    let mut names = Vec::new();
    for i in 1..=n {
        let name = format!("shared-{i}");
        image(&name, &name, "1.0.0");
        let reference = push(&name, &name, "1.0.0");
        agent.shg(&["install", "--pull-on-gateway", &reference]);
        names.push(name);
    }
    let store = image::disk_usage(&state.join("layers")).unwrap();
    // Each running service's root is a full view of its image: what a copy would take.
    let copies: u64 = names
        .iter()
        .map(|name| {
            let releases = state.join("services").join(name).join("releases");
            let release = std::fs::read_dir(&releases)
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            image::disk_usage(&release.path().join("rootfs")).unwrap()
        })
        .sum();
    for name in &names {
        agent.shg(&["remove", name]);
    }
    (downloaded, full, (n, store, copies))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(work: &Path) -> Registry {
        let port = testdata::free_port();
        let addr = format!("127.0.0.1:{port}");
        let data = work.join("registry");
        std::fs::create_dir_all(&data).unwrap();
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                data.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr }
    }

    /// Config plus layers of `repo:tag`, as the registry serves its manifest.
    fn image_bytes(&self, repo: &str, tag: &str) -> u64 {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
            ])
            .arg(format!("http://{}/v2/{repo}/manifests/{tag}", self.addr))
            .output()
            .unwrap();
        let m: Value = serde_json::from_slice(&out.stdout).expect("a manifest");
        std::iter::once(&m["config"])
            .chain(m["layers"].as_array().unwrap())
            .map(|d| d["size"].as_u64().unwrap())
            .sum()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Agent {
    child: Child,
    shg: PathBuf,
    socket: PathBuf,
    work: PathBuf,
}

impl Agent {
    fn start(shg: &Path, state: &Path, work: &Path) -> Agent {
        let child = Command::new(shg)
            .args(["gateway", "run", "--state-dir"])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        let agent = Agent {
            child,
            shg: shg.to_path_buf(),
            socket: state.join("api.sock"),
            work: work.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.run(&["ps"], None).status.success() {
            assert!(Instant::now() < deadline, "the agent did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn run(&self, args: &[&str], cache: Option<&Path>) -> std::process::Output {
        let mut cmd = Command::new(&self.shg);
        cmd.args(args)
            .env("SHG_GATEWAY", &self.socket)
            .current_dir(&self.work);
        if let Some(cache) = cache {
            cmd.env("XDG_CACHE_HOME", cache);
        }
        cmd.output().expect("run shg")
    }

    fn shg_cached(&self, args: &[&str], cache: &Path) -> String {
        let out = self.run(args, Some(cache));
        assert!(
            out.status.success(),
            "shg {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn shg(&self, args: &[&str]) -> String {
        self.shg_cached(args, &self.work.join("cache"))
    }

    /// Waits until `timed` satisfies `pred` (from `ps --json`).
    fn wait(&self, pred: impl Fn(&Value) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list: Value = serde_json::from_str(&self.shg(&["ps", "--json"])).unwrap();
            if list
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "timed" && pred(s))
            {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn events_since(&self, since: i64) -> Vec<Value> {
        let all: Value =
            serde_json::from_str(&self.shg(&["events", "--service", "timed", "--json"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["id"].as_i64().unwrap_or(0) > since)
            .cloned()
            .collect()
    }

    fn last_event_id(&self) -> i64 {
        self.events_since(0)
            .last()
            .and_then(|e| e["id"].as_i64())
            .unwrap_or(0)
    }

    fn wait_event(&self, kind: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .events_since(0)
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
            < count
        {
            assert!(Instant::now() < deadline, "no {kind} event");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(self) {
        drop(self);
    }
}

/// Dropped (also when the bench fails halfway), the agent removes its services and stops, so
/// no container, mount or cgroup outlives the bench.
impl Drop for Agent {
    fn drop(&mut self) {
        common::remove_all_and_stop(&self.shg, &self.socket, &mut self.child);
    }
}
