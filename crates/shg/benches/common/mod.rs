//! What both benches need: busybox service packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Writes a busybox service (provider `bench`) with `command`, restart `policy` and
/// `resources`, and packs it with `shg pack`; returns the package path.
pub fn package_with(
    shg: &Path,
    work: &Path,
    busybox: &Path,
    name: &str,
    command: &str,
    policy: &str,
    resources: &str,
) -> PathBuf {
    let dir = work.join(name);
    samples::busybox_rootfs(&dir.join("rootfs"), busybox).expect("rootfs");
    let manifest = format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"bench\"\n\n[run]\n{command}\n\n\
         [resources]\n{resources}\n\n[restart]\npolicy = \"{policy}\"\n"
    );
    std::fs::write(dir.join("shg-service.toml"), manifest).unwrap();
    let out = work.join(format!("{name}.tar"));
    let (key, _) = bench_key(shg, work);
    let status = Command::new(shg)
        .arg("pack")
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .arg("--sign")
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "shg pack failed");
    out
}

/// The signing key of provider `bench` (secret, public), made with `shg key gen` once per
/// work directory; the bench's agent must trust the public one.
pub fn bench_key(shg: &Path, work: &Path) -> (PathBuf, PathBuf) {
    let dir = work.join("keys");
    let (key, public) = (dir.join("bench.key"), dir.join("bench.pub"));
    if !key.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(shg)
            .args(["key", "gen", "bench", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "shg key gen failed");
    }
    (key, public)
}
