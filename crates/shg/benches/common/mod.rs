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
    let status = Command::new(shg)
        .arg("pack")
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "shg pack failed");
    out
}
