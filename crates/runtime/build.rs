//! Compiles the seccomp rules (`src/seccomp_rules.rs`) into the BPF program `shg-init` loads,
//! once at build time instead of at every container start: libseccomp took a few milliseconds
//! of each start to turn the same rules into the same program.
//!
//! Then builds `shg-init` itself (`init/main.rs`, with that program in it; see `build/init.rs`),
//! and the crate embeds the result (`runtime::init::BINARY`).

use std::path::PathBuf;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

#[allow(dead_code)]
#[path = "src/seccomp_rules.rs"]
mod rules;

#[path = "build/init.rs"]
mod init;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=src/seccomp_rules.rs");
    println!("cargo:rerun-if-changed=init");
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    if !init::ARCHES.contains(&target.as_str()) {
        panic!(
            "shg-init and its seccomp filter are made for {:?} only: add {target}'s system \
             call numbers to runtime/init/sys.rs, its `_start` to init/main.rs, and its \
             libseccomp arch to runtime/build.rs",
            init::ARCHES
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The filter of every supported architecture, so the tests can build the init for the
    // one this build is not for.
    for arch in init::ARCHES {
        let bpf = compile(scmp_arch(arch))
            .unwrap_or_else(|e| panic!("cannot compile the seccomp rules for {arch}: {e}"));
        let path = out.join(format!("seccomp-{arch}.bpf"));
        std::fs::File::create(&path)
            .and_then(|file| bpf.export_bpf(&file).map_err(std::io::Error::other))
            .unwrap_or_else(|e| panic!("cannot write the seccomp filter {}: {e}", path.display()));
    }
    let own = out.join(format!("seccomp-{target}.bpf"));
    std::fs::copy(&own, out.join("seccomp.bpf"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", own.display()));
    let rustc = std::env::var("RUSTC").expect("cargo sets RUSTC");
    let triple = std::env::var("TARGET").expect("cargo sets TARGET");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    init::compile(
        &rustc,
        &triple,
        &manifest_dir.join("init/main.rs"),
        &own,
        &out.join("shg-init"),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn scmp_arch(arch: &str) -> ScmpArch {
    match arch {
        "x86_64" => ScmpArch::X8664,
        "aarch64" => ScmpArch::Aarch64,
        other => unreachable!("{other} is not in init::ARCHES"),
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
        // A call the arch does not have comes back as a negative pseudo number, which
        // libseccomp refuses in a rule for that arch alone.
        ScmpSyscall::from_name_by_arch(name, arch)
            .ok()
            .filter(|call| call.as_raw_syscall() >= 0)
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
