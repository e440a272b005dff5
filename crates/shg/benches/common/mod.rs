//! What the benches share: busybox service packages, the quick mode, and the clean-up of an
//! agent's services when a bench ends, also halfway through.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The environment variable that runs every bench in its quick mode: the same steps, a few
/// times each, in short windows. scripts/test.sh sets it, so a broken bench fails the build;
/// the figures of a quick run are not for BENCHMARKS.md.
pub const QUICK_VAR: &str = "SHG_BENCH_QUICK";

/// Whether `SHG_BENCH_QUICK` asks for the quick mode (set, and neither empty nor `0`).
pub fn quick() -> bool {
    std::env::var_os(QUICK_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `full` in a full run, `quick` in the quick mode.
pub fn scaled<T>(full: T, quick_value: T) -> T {
    if quick() {
        quick_value
    } else {
        full
    }
}

/// Says which mode runs, first, so a quick run's figures are never mistaken for real ones.
pub fn announce(bench: &str) {
    if quick() {
        println!("{bench} bench: QUICK mode ({QUICK_VAR}=1): few runs, short windows; checks that the bench works, the figures are not comparable");
    }
}

/// Writes a busybox service (provider `bench`) with `command`, restart `policy` and
/// `resources` under `work/NAME`, and packs it with `shg pack`, signed with the bench key of
/// `work`; returns the package path.
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
    assert!(status.success(), "shg pack of {name} failed");
    out
}

/// The signing key of provider `bench` (secret, public), made with `shg key gen` once per
/// work directory; the bench's agent must trust the public one. Every package of a bench is
/// to be packed with the same `work`, or it is signed with a key nobody trusts.
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

/// Removes every service of the agent listening on `socket`, then stops the agent (SIGTERM,
/// then waits for it). Services outlive their agent, so without this a bench that fails
/// halfway would leave containers (some spinning), their mounts, loop devices and cgroups
/// behind. Runs from `Drop`, possibly while a panic unwinds: it reports what it could not
/// remove and never panics itself.
pub fn remove_all_and_stop(shg: &Path, socket: &Path, agent: &mut Child) {
    let cli = |args: &[&str]| {
        Command::new(shg)
            .args(args)
            .env("SHG_GATEWAY", socket)
            .stdin(Stdio::null())
            .output()
    };
    let names: Vec<String> = match cli(&["ps", "--json"]) {
        Ok(out) if out.status.success() => serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|list| list.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect(),
        Ok(out) => {
            eprintln!(
                "bench clean-up: `shg ps` on {} failed: {}; remove its services by hand",
                socket.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("bench clean-up: cannot run {}: {e}", shg.display());
            Vec::new()
        }
    };
    for name in names {
        match cli(&["remove", &name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "bench clean-up: `shg remove {name}` failed: {}; remove it by hand (SHG_GATEWAY={})",
                String::from_utf8_lossy(&out.stderr).trim(),
                socket.display()
            ),
            Err(e) => eprintln!("bench clean-up: cannot run `shg remove {name}`: {e}"),
        }
    }
    // SAFETY: kill on the PID of a child this bench started and has not reaped yet.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
}
