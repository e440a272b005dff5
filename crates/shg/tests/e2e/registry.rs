//! Installing from a real OCI registry: Debian's `docker-registry` on loopback, the image put
//! there by `skopeo`, pulled by `shg install REFERENCE` through the distribution API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{eventually, run_captured, Gateway, Out, SHG};

/// A registry on a free loopback port, stopped when dropped.
pub(crate) struct Registry {
    child: Child,
    pub(crate) addr: String,
    data: PathBuf,
}

impl Registry {
    pub(crate) fn start(work: &Path) -> Registry {
        let port = testdata::free_port();
        let addr = format!("127.0.0.1:{port}");
        let data = work.join("registry-data");
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                data.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(work.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run docker-registry (scripts/setup.sh installs it)");
        let registry = Registry { child, addr, data };
        eventually("the registry to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&registry.addr)
                .ok()
                .map(|_| ())
        });
        registry
    }

    /// Copies the OCI layout tar `package` into the registry as `repo:tag` with skopeo.
    pub(crate) fn push(&self, package: &Path, repo: &str, tag: &str, scratch: &Path) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", package.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr));
        let out = run_captured(cmd, scratch, Duration::from_secs(120));
        assert!(out.ok(), "skopeo copy failed:\n{out}");
    }

    /// [`Registry::push`], then `shg sign` the image there with the provider's trusted test
    /// key (skopeo carries the image, not the signature in the package's index.json).
    fn push_signed(&self, gw: &Gateway, package: &Path, repo: &str, tag: &str, provider: &str) {
        self.push(package, repo, tag, &gw.work);
        let key = gw.trusted_key(provider);
        let mut cmd = Command::new(SHG);
        cmd.arg("sign")
            .arg(format!("{}/{repo}:{tag}", self.addr))
            .arg("--key")
            .arg(&key);
        let out = run_captured(cmd, &gw.work, Duration::from_secs(60));
        assert!(out.ok(), "shg sign failed:\n{out}");
    }

    /// The registry's own copy of blob `hex` (its filesystem driver's layout).
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shg install ARGS…` with the blob cache in the test's work directory.
fn install(gw: &Gateway, args: &[&str]) -> Out {
    let mut cmd = Command::new(SHG);
    cmd.arg("install")
        .args(args)
        .env("SHG_GATEWAY", gw.socket())
        .env("XDG_CACHE_HOME", gw.work.join("cache"));
    run_captured(cmd, &gw.work, Duration::from_secs(120))
}

fn manifest(name: &str, version: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"{version}\"\nprovider = \"acme\"\n\n\
         [run]\ncommand = [\"/bin/sh\", \"-c\", \"echo {name} {version}; exec sleep 100000\"]\n"
    )
}

/// The layer's digest (hex) of the package as the registry serves its manifest.
fn layer_of(registry: &Registry, repo: &str, tag: &str) -> String {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{}{path}", registry.addr))
        .output()
        .expect("run curl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a manifest");
    json["layers"][0]["digest"].as_str().unwrap()[7..].to_string()
}

#[test]
fn a_package_pushed_by_skopeo_installs_from_the_registry_by_reference() {
    let gw = Gateway::start();
    let registry = Registry::start(&gw.work);
    let package = gw.package("hello", &manifest("hello", "1.0.0"), &[]);
    registry.push(&package, "acme/hello", "1.0", &gw.work);
    let reference = format!("{}/acme/hello:1.0", registry.addr);

    // skopeo carries the image but not the signature the package file held: unsigned.
    let out = install(&gw, &["--dry-run", &reference]);
    assert!(
        !out.ok() && out.stderr.contains("is unsigned"),
        "an unsigned image was accepted: {out}"
    );
    // `shg sign` stores the provider's signature beside the image; pulls bring it along.
    registry.push_signed(&gw, &package, "acme/hello", "1.0", "acme");

    // By tag, then the same image by digest, which checks what the registry sends.
    let out = install(&gw, &["--dry-run", &reference]);
    assert!(
        out.ok() && out.stdout.contains("would be admitted"),
        "{out}"
    );
    let digest = out
        .stderr
        .split("(sha256:")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(|hex| format!("sha256:{hex}"))
        .unwrap_or_else(|| panic!("no digest in: {out}"));
    let by_digest = format!("{}/acme/hello@{digest}", registry.addr);
    let out = install(&gw, &[&by_digest]);
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    let svc = gw.wait_running("hello");
    assert_eq!(svc.version, "1.0.0");
    // The package made from the blobs was only a vehicle; the blobs stay for the next pull.
    let left: Vec<_> = std::fs::read_dir(gw.work.join("cache/shg/packages"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "pulled packages left behind: {left:?}");
    let logs = gw.shg_ok(&["logs", "hello"]);
    assert!(logs.stdout.contains("hello 1.0.0"), "{logs}");

    // What is not there is named as such.
    let out = install(&gw, &[&format!("{}/acme/nope:1.0", registry.addr)]);
    assert!(
        !out.ok() && out.stderr.contains("no such image in the registry"),
        "{out}"
    );
    gw.shg_ok(&["remove", "hello"]);
}

#[test]
fn blobs_are_verified_and_an_interrupted_download_resumes() {
    let gw = Gateway::start();
    let registry = Registry::start(&gw.work);
    // A layer big enough to be worth resuming: 2 MB of incompressible bytes.
    let noise: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let package = gw.package(
        "big",
        &manifest("big", "1.0.0"),
        &[("noise", &noise, 0o644)],
    );
    registry.push_signed(&gw, &package, "acme/big", "1.0", "acme");
    let reference = format!("{}/acme/big:1.0", registry.addr);
    let hex = layer_of(&registry, "acme/big", "1.0");
    let cache = gw.work.join("cache/shg/blobs/sha256");
    std::fs::create_dir_all(&cache).unwrap();
    let layer = std::fs::read(registry.blob_file(&hex)).expect("the registry's copy");

    // A partial download whose bytes are wrong: the pull resumes after them, so the digest
    // cannot match; the blob is discarded and nothing is installed.
    let mut wrong = layer[..layer.len() / 2].to_vec();
    wrong[10] ^= 0xff;
    std::fs::write(cache.join(format!("{hex}.partial")), &wrong).unwrap();
    let out = install(&gw, &["--no-start", &reference]);
    assert!(
        !out.ok() && out.stderr.contains("does not match its digest"),
        "a corrupt resumed blob was accepted: {out}"
    );
    assert!(gw.svc("big").is_none(), "installed from a corrupt blob");
    assert!(!cache.join(format!("{hex}.partial")).exists());

    // A partial download of the right bytes resumes to a whole, verified blob.
    std::fs::write(
        cache.join(format!("{hex}.partial")),
        &layer[..layer.len() / 2],
    )
    .unwrap();
    let out = install(&gw, &["--no-start", &reference]);
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    assert_eq!(std::fs::read(cache.join(&hex)).unwrap(), layer);
    gw.shg_ok(&["remove", "big"]);

    // A registry whose stored copy was tampered with: refused, and nothing kept.
    std::fs::remove_file(cache.join(&hex)).unwrap();
    let mut tampered = layer.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    std::fs::write(registry.blob_file(&hex), &tampered).unwrap();
    let out = install(&gw, &[&reference]);
    assert!(
        !out.ok() && out.stderr.contains("does not match its digest"),
        "a tampered blob was accepted: {out}"
    );
    assert!(!cache.join(&hex).exists());
    assert!(gw.svc("big").is_none());
}

/// Runs `umoci ARGS…` in `dir`, insisting it succeeds.
fn umoci(dir: &Path, args: &[&str], scratch: &Path) {
    let mut cmd = Command::new("umoci");
    cmd.args(args).current_dir(dir);
    let out = run_captured(cmd, scratch, Duration::from_secs(120));
    assert!(out.ok(), "umoci {} failed:\n{out}", args.join(" "));
}

#[test]
fn an_image_umoci_built_from_a_plain_root_filesystem_installs_and_runs() {
    let gw = Gateway::start();
    // A plain directory tree (busybox) and a manifest, put together with umoci alone.
    let source = gw.package_dir("plain", &manifest("plain", "2.0.0"), &[]);
    let build = gw.work.join("umoci");
    std::fs::create_dir_all(&build).unwrap();
    let scratch = gw.work.clone();
    umoci(&build, &["init", "--layout", "layout"], &scratch);
    umoci(&build, &["new", "--image", "layout:2.0"], &scratch);
    umoci(
        &build,
        &["unpack", "--rootless", "--image", "layout:2.0", "bundle"],
        &scratch,
    );
    let status = Command::new("cp")
        .arg("-a")
        .arg(source.join("rootfs/."))
        .arg(build.join("bundle/rootfs/"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot copy the root filesystem");
    umoci(
        &build,
        &["repack", "--image", "layout:2.0", "bundle"],
        &scratch,
    );
    let label = format!(
        "org.shg.manifest={}",
        std::fs::read_to_string(source.join("shg-service.toml")).unwrap()
    );
    umoci(
        &build,
        &["config", "--image", "layout:2.0", "--config.label", &label],
        &scratch,
    );
    let tar = gw.work.join("plain-umoci.tar");
    let mut cmd = Command::new("tar");
    cmd.arg("-C")
        .arg(build.join("layout"))
        .arg("-cf")
        .arg(&tar)
        .arg(".");
    let out = run_captured(cmd, &scratch, Duration::from_secs(60));
    assert!(out.ok(), "tar failed:\n{out}");

    gw.sign(&tar, "acme");
    gw.shg_ok(&["install", tar.to_str().unwrap()]);
    let svc = gw.wait_running("plain");
    assert_eq!(svc.version, "2.0.0");
    eventually("its first line in the log", Duration::from_secs(10), || {
        gw.shg(&["logs", "plain"])
            .stdout
            .contains("plain 2.0.0")
            .then_some(())
    });
    gw.shg_ok(&["remove", "plain"]);
}

#[test]
fn the_gateway_pulls_by_itself_and_updates_by_version_from_the_same_repository() {
    let gw = Gateway::start();
    let registry = Registry::start(&gw.work);
    for version in ["1.0.0", "2.0.0"] {
        let package = gw.package(&format!("app-{version}"), &manifest("app", version), &[]);
        registry.push_signed(&gw, &package, "acme/app", version, "acme");
    }
    let reference = format!("{}/acme/app:1.0.0", registry.addr);
    let out = gw.shg_ok(&["install", "--pull-on-gateway", &reference]);
    assert!(out.stdout.contains("the gateway pulled"), "{out}");
    gw.wait_running("app");
    // The blobs are in the agent's own cache, and the service remembers where it came from.
    let cached = std::fs::read_dir(gw.dir.join("cache/blobs/sha256"))
        .unwrap()
        .count();
    assert!(cached >= 2, "{cached} blobs in the agent's cache");
    assert_eq!(gw.inspect("app")["source"], reference.as_str());

    // `shg update NAME VERSION` pulls that tag of the same repository.
    let out = install_like(&gw, &["update", "app", "2.0.0", "--window", "1s"]);
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    assert_eq!(gw.wait_running("app").version, "2.0.0");
    assert_eq!(
        gw.inspect("app")["source"],
        format!("{}/acme/app:2.0.0", registry.addr).as_str()
    );

    // A reference nobody serves is named.
    let out = gw.shg(&["install", "--pull-on-gateway", "127.0.0.1:9/acme/none:1"]);
    assert!(!out.ok() && out.stderr.contains("cannot pull"), "{out}");
    gw.shg_ok(&["remove", "app"]);
}

/// `shg ARGS…` with the blob cache in the test's work directory.
fn install_like(gw: &Gateway, args: &[&str]) -> Out {
    let mut cmd = Command::new(SHG);
    cmd.args(args)
        .env("SHG_GATEWAY", gw.socket())
        .env("XDG_CACHE_HOME", gw.work.join("cache"));
    run_captured(cmd, &gw.work, Duration::from_secs(120))
}
