//! How `shg-init` (`init/main.rs`) is compiled: by `build.rs` for the crate's target, and by
//! the tests for the other architecture it supports (run there under `qemu-aarch64-static`).
//!
//! A program without the standard library must be compiled with `panic=abort` and linked with
//! a start of its own, neither of which Cargo sets for one binary of a workspace, so `rustc` is
//! called directly. It links with the `rust-lld` that comes with `rustc`: no C toolchain is
//! needed, for the host or for another architecture.

use std::path::Path;
use std::process::Command;

/// The architectures `init/sys.rs` has system calls for.
pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// Compiles `source` (`init/main.rs`) for `target` (a Rust target triple) into `output`: a
/// static executable, not position independent (nothing to relocate at its start), without a
/// C library, optimised whatever the profile, with the seccomp program `bpf` built in.
/// `cfgs` are set with `--cfg` (the tests' `shg_init_emulated`; none for the real program).
pub fn compile(
    rustc: &str,
    target: &str,
    source: &Path,
    bpf: &Path,
    output: &Path,
    cfgs: &[&str],
) -> Result<(), String> {
    let status = Command::new(rustc)
        .env("SHG_SECCOMP_BPF", bpf)
        .args(["--edition", "2021", "--crate-type", "bin"])
        .args(["--crate-name", "shg_init", "--target", target])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "strip=symbols", "-C", "codegen-units=1"])
        .args([
            "-C",
            "relocation-model=static",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "linker=rust-lld", "-C", "linker-flavor=ld.lld"])
        .args(["-C", "link-arg=-nostdlib", "-D", "warnings"])
        .args(cfgs.iter().flat_map(|cfg| ["--cfg", cfg]))
        .arg("-o")
        .arg(output)
        .arg(source)
        .status()
        .map_err(|e| format!("cannot run {rustc} to build shg-init: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{rustc} could not build shg-init for {target} from {} ({status}); see its errors \
             above",
            source.display()
        ))
    }
}
