//! Compiles the seccomp rules (`src/seccomp_rules.rs`) into the BPF program `shg-init` loads,
//! once at build time instead of at every container start: libseccomp took a few milliseconds
//! of each start to turn the same rules into the same program.
//!
//! Then builds `shg-init` itself (`init/main.rs`, with that program in it): a program without
//! the standard library, which must be compiled with `panic=abort` and linked with a start of
//! its own, neither of which Cargo sets for one binary of a workspace. So `rustc` is called
//! here directly, and the crate embeds the result (`runtime::init::BINARY`).

use std::path::{Path, PathBuf};
use std::process::Command;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

#[allow(dead_code)]
#[path = "src/seccomp_rules.rs"]
mod rules;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/seccomp_rules.rs");
    println!("cargo:rerun-if-changed=init");
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let arch = match target.as_str() {
        "x86_64" => ScmpArch::X8664,
        "aarch64" => ScmpArch::Aarch64,
        other => panic!("no seccomp filter for target arch {other}: add it to runtime/build.rs"),
    };
    let bpf = compile(arch).unwrap_or_else(|e| panic!("cannot compile the seccomp rules: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::File::create(out.join("seccomp.bpf"))
        .and_then(|file| bpf.export_bpf(&file).map_err(std::io::Error::other))
        .unwrap_or_else(|e| panic!("cannot write the seccomp filter to {}: {e}", out.display()));
    build_init(&target, &out);
}

/// Compiles `init/main.rs` into `OUT_DIR/shg-init`: a static executable (not position
/// independent, so nothing needs relocating at its start), without the C library's start
/// files or libraries, optimised whatever the profile.
fn build_init(arch: &str, out: &Path) {
    if arch != "x86_64" {
        panic!(
            "shg-init makes its system calls for x86_64 only: add {arch}'s numbers and calling \
             convention to runtime/init/sys.rs and its `_start` to init/main.rs"
        );
    }
    let rustc = std::env::var("RUSTC").expect("cargo sets RUSTC");
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let binary = out.join("shg-init");
    let status = Command::new(&rustc)
        .env("SHG_SECCOMP_BPF", out.join("seccomp.bpf"))
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "shg_init",
        ])
        .args(["--target", &target])
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
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-D", "warnings"])
        .arg("-o")
        .arg(&binary)
        .arg(manifest_dir.join("init/main.rs"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {rustc} to build shg-init: {e}"));
    if !status.success() {
        panic!(
            "{rustc} could not build shg-init from init/main.rs ({status}); see its errors above"
        );
    }
}

fn compile(arch: ScmpArch) -> Result<ScmpFilterContext, libseccomp::error::SeccompError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(rules::DENIED_ERRNO as i32))?;
    // Only the target's own ABI: a call through another ABI (32-bit x86 on x86_64) kills the
    // thread instead of being checked against numbers that mean something else there.
    ctx.add_arch(arch)?;
    if ScmpArch::native() != arch {
        ctx.remove_arch(ScmpArch::native())?;
    }
    // The runtime sets no_new_privs itself (the spec's `noNewPrivileges`).
    ctx.set_ctl_nnp(false)?;
    let syscall = |name: &str| {
        // A name libseccomp does not know on any arch is a typo in the rules.
        ScmpSyscall::from_name(name)
            .unwrap_or_else(|_| panic!("seccomp rules: no system call named {name:?}"));
        ScmpSyscall::from_name_by_arch(name, arch).ok()
    };
    for name in rules::ALLOWED {
        // Legacy calls some arches never had (aarch64 has no `open` or `fork`) are skipped.
        if let Some(call) = syscall(name) {
            ctx.add_rule(ScmpAction::Allow, call)?;
        }
    }
    let clone = syscall("clone").expect("every arch has clone");
    ctx.add_rule_conditional(
        ScmpAction::Allow,
        clone,
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(rules::CLONE_NAMESPACE_FLAGS),
            0,
        )],
    )?;
    if let Some(clone3) = syscall("clone3") {
        ctx.add_rule(ScmpAction::Errno(rules::CLONE3_ERRNO as i32), clone3)?;
    }
    let personality = syscall("personality").expect("every arch has personality");
    for &persona in rules::PERSONAS {
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            personality,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, persona)],
        )?;
    }
    Ok(ctx)
}
