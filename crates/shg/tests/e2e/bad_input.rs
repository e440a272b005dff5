//! Refused requests: each exits non-zero, says what is wrong with which object, and leaves the
//! gateway exactly as it was.

use std::path::{Path, PathBuf};

use crate::harness::{Gateway, Out, Svc};

fn minimal(name: &str, command: &str, resources: &str) -> String {
    format!("name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = {command}\n{resources}")
}

/// What a refused request must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    ps: Vec<Svc>,
    services: Vec<String>,
    tmp: Vec<String>,
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn snapshot(gw: &Gateway) -> Snapshot {
    Snapshot {
        ps: gw.ps(),
        services: listing(&gw.dir.join("services")),
        tmp: listing(&gw.dir.join("tmp")),
    }
}

/// Runs a command that must be refused with a message containing every one of `words`.
fn refused(gw: &Gateway, before: &Snapshot, args: &[&str], words: &[&str]) -> Out {
    let out = gw.shg(args);
    assert!(
        !out.ok() && out.code.is_some(),
        "`shg {}` was not refused:\n{out}",
        args.join(" ")
    );
    for word in words {
        assert!(
            out.stderr.contains(word),
            "`shg {}` does not say {word:?}:\n{out}",
            args.join(" ")
        );
    }
    assert!(out.stderr.starts_with("error: "), "{out}");
    assert_eq!(
        &snapshot(gw),
        before,
        "`shg {}` changed the gateway",
        args.join(" ")
    );
    out
}

/// Flips one byte in the middle of the largest blob (the layer) of an OCI layout tar.
fn corrupt_layer(tar: &Path) -> PathBuf {
    let mut bytes = std::fs::read(tar).unwrap();
    let mut at = 0;
    let mut largest: Option<(usize, usize)> = None;
    while at + 512 <= bytes.len() && bytes[at] != 0 {
        let header = &bytes[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_field = String::from_utf8_lossy(&header[124..136])
            .trim_matches(|c| c == '\0' || c == ' ')
            .to_string();
        let size = usize::from_str_radix(&size_field, 8)
            .unwrap_or_else(|_| panic!("bad tar size {size_field:?}"));
        if name.contains("blobs/sha256/") && largest.is_none_or(|(_, s)| size > s) {
            largest = Some((at + 512, size));
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    let (data, size) = largest.expect("the package holds blobs");
    bytes[data + size / 2] ^= 0xff;
    let out = tar.with_extension("corrupt.tar");
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let gw = Gateway::start();
    gw.install(
        "steady",
        &minimal("steady", r#"["/bin/sleep", "1000000"]"#, ""),
        &[],
    );
    gw.shg_ok(&[
        "install",
        "--no-start",
        gw.package(
            "parked",
            &minimal("parked", r#"["/bin/sleep", "1000000"]"#, ""),
            &[],
        )
        .to_str()
        .unwrap(),
    ]);
    gw.wait_running("steady");
    let before = snapshot(&gw);
    assert_eq!(before.ps.len(), 2);

    let missing = gw.work.join("nope.tar");
    refused(
        &gw,
        &before,
        &["install", missing.to_str().unwrap()],
        &[missing.to_str().unwrap()],
    );

    let good = gw.package(
        "fresh",
        &minimal("fresh", r#"["/bin/sleep", "1000000"]"#, ""),
        &[],
    );
    let corrupt = corrupt_layer(&good);
    refused(
        &gw,
        &before,
        &["install", corrupt.to_str().unwrap()],
        &["digest", "sha256:"],
    );

    // `shg pack` checks the manifest; a package built without that check is refused too.
    let over = minimal(
        "greedy",
        r#"["/bin/sleep", "1000000"]"#,
        "\n[resources]\nmemory = { reserve = \"64MiB\", limit = \"32MiB\" }\n",
    );
    let dir = gw.package_dir("greedy", &over, &[]);
    let pack = crate::harness::run_captured(
        {
            let mut c = std::process::Command::new(crate::harness::SHG);
            c.arg("pack")
                .arg(&dir)
                .arg("-o")
                .arg(gw.work.join("greedy.tar"));
            c
        },
        &gw.work,
        std::time::Duration::from_secs(60),
    );
    assert!(
        !pack.ok() && pack.stderr.contains("resources.memory.limit"),
        "shg pack accepted the bad manifest:\n{pack}"
    );
    let sneaked = gw.work.join("greedy-unchecked.tar");
    image::pack(&dir, &sneaked).expect("the image layer packs any manifest text");
    refused(
        &gw,
        &before,
        &["install", sneaked.to_str().unwrap()],
        &["resources.memory.limit"],
    );

    let duplicate = gw.package(
        "steady-again",
        &minimal("steady", r#"["/bin/sleep", "5"]"#, ""),
        &[],
    );
    refused(
        &gw,
        &before,
        &["install", duplicate.to_str().unwrap()],
        &["/steady`", "already installed", "shg remove "],
    );

    let nocmd = gw.package("ghost", &minimal("ghost", r#"["/bin/nope"]"#, ""), &[]);
    refused(
        &gw,
        &before,
        &["install", nocmd.to_str().unwrap()],
        &["/bin/nope"],
    );

    for verb in [
        &["stop", "nosuch"][..],
        &["start", "nosuch"],
        &["restart", "nosuch"],
        &["remove", "nosuch"],
        &["inspect", "nosuch"],
        &["logs", "nosuch"],
        &["exec", "nosuch", "--", "true"],
    ] {
        refused(&gw, &before, verb, &["no service named `nosuch`"]);
    }

    refused(
        &gw,
        &before,
        &["exec", "parked", "--", "true"],
        &["`parked`", "not running"],
    );
}
