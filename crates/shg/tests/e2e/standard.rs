//! Standard images: one built by Debian's `buildah` from a `FROM scratch` Containerfile (no
//! SHG label), installed with its `shg-service.toml` beside it, from a registry (pushed by
//! `skopeo`) and from a file, running as the image's own config says; the signature covers
//! the image and the manifest together, so a swapped manifest is refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{eventually, run_captured, Gateway, Out, SHG};
use crate::registry::Registry;

/// What the image runs: its config's Entrypoint and Cmd, saying where, as whom and with
/// which environment it runs, then sleeping.
const CONTAINERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
ENV GREETING=hello
USER 1000:1000
WORKDIR /srv
EXPOSE 8080/tcp
ENTRYPOINT ["/bin/busybox"]
CMD ["sh", "-c", "echo \"$GREETING from $(/bin/busybox pwd) as $(/bin/busybox id -u):$(/bin/busybox id -g) mode=$MODE\"; exec /bin/busybox sleep 100000"]
"#;

/// Builds the image with buildah (storage of its own under `work`, the vfs driver: no
/// overlay mounts, no daemon) and exports it with skopeo as an OCI archive, which is also
/// what goes to the registry. Returns the archive.
fn build_image(work: &Path) -> PathBuf {
    let context = work.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).expect("busybox-static");
    std::fs::write(context.join("Containerfile"), CONTAINERFILE).unwrap();
    let storage = format!(
        "vfs@{}+{}",
        work.join("buildah/root").display(),
        work.join("buildah/run").display()
    );
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(work.join("buildah/root"))
        .arg("--runroot")
        .arg(work.join("buildah/run"))
        .args(["--storage-driver", "vfs", "bud", "--format", "oci", "-t"])
        .arg("localhost/std:1")
        .arg("-f")
        .arg(context.join("Containerfile"))
        .arg(&context);
    let out = run_captured(cmd, work, Duration::from_secs(120));
    assert!(
        out.ok(),
        "buildah bud failed (scripts/setup.sh installs buildah):\n{out}"
    );
    let archive = work.join("std-image.tar");
    let mut cmd = Command::new("skopeo");
    cmd.arg("copy")
        .arg(format!("containers-storage:[{storage}]localhost/std:1"))
        .arg(format!("oci-archive:{}", archive.display()));
    let out = run_captured(cmd, work, Duration::from_secs(120));
    assert!(
        out.ok(),
        "skopeo copy out of buildah's storage failed:\n{out}"
    );
    archive
}

/// A manifest that says nothing of what to run: the image's config does.
fn manifest(name: &str, version: &str, mode: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"{version}\"\nprovider = \"acme\"\n\
         description = \"built by buildah FROM scratch\"\n\n\
         [run]\nenv = {{ MODE = \"{mode}\" }}\n\n\
         [resources]\nmemory = {{ reserve = \"16MiB\", limit = \"64MiB\" }}\n"
    )
}

/// `shg ARGS…` with the blob cache in the test's work directory.
fn shg(gw: &Gateway, args: &[&str]) -> Out {
    let mut cmd = Command::new(SHG);
    cmd.args(args)
        .env("SHG_GATEWAY", gw.socket())
        .env("XDG_CACHE_HOME", gw.work.join("cache"));
    run_captured(cmd, &gw.work, Duration::from_secs(120))
}

fn write(gw: &Gateway, file: &str, text: &str) -> String {
    let path = gw.work.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Waits for the line the image's command prints first.
fn first_line(gw: &Gateway, name: &str) -> String {
    eventually("the service's first line", Duration::from_secs(10), || {
        let logs = gw.shg(&["logs", name]).stdout;
        logs.contains(" from ").then_some(logs)
    })
}

#[test]
fn a_standard_image_built_by_buildah_installs_with_its_manifest_beside_it() {
    let gw = Gateway::start();
    let registry = Registry::start(&gw.work);
    let archive = build_image(&gw.work);
    registry.push(&archive, "acme/std", "1.0", &gw.work);
    let reference = format!("{}/acme/std:1.0", registry.addr);
    let key = gw.trusted_key("acme");
    let key = key.to_str().unwrap();
    let signed = write(&gw, "std.toml", &manifest("std", "1.0.0", "beside"));

    // No label and no manifest: refused, naming both ways out.
    let out = shg(&gw, &["install", "--dry-run", &reference]);
    assert!(
        !out.ok()
            && out.stderr.contains("no org.shg.manifest label")
            && out.stderr.contains("--manifest shg-service.toml")
            && out.stderr.contains("shg pack"),
        "{out}"
    );
    // With its manifest but unsigned: the refusal says how to sign the pair.
    let out = shg(
        &gw,
        &["install", "--dry-run", &reference, "--manifest", &signed],
    );
    assert!(
        !out.ok() && out.stderr.contains("shg sign IMAGE --manifest"),
        "{out}"
    );

    // The provider signs the image in the registry together with its manifest.
    let out = shg(
        &gw,
        &["sign", &reference, "--manifest", &signed, "--key", key],
    );
    assert!(out.ok() && out.stdout.contains("std.toml"), "{out}");

    // The manifest swapped after signing (a bigger memory limit): refused.
    let swapped = write(
        &gw,
        "swapped.toml",
        &manifest("std", "1.0.0", "beside").replace("64MiB", "512MiB"),
    );
    let out = shg(&gw, &["install", &reference, "--manifest", &swapped]);
    assert!(
        !out.ok() && out.stderr.contains("with another shg-service.toml"),
        "a swapped manifest was accepted: {out}"
    );
    assert!(gw.svc("std").is_none());

    // The pair as signed installs and runs the image's Entrypoint and Cmd, with its Env
    // (and the manifest's), as its User, in its WorkingDir.
    let out = shg(&gw, &["install", &reference, "--manifest", &signed]);
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    let svc = gw.wait_running("std");
    assert_eq!(svc.version, "1.0.0");
    let line = first_line(&gw, "std");
    assert!(
        line.contains("hello from /srv as 1000:1000 mode=beside"),
        "{line}"
    );
    let detail = gw.inspect("std");
    assert_eq!(detail["manifest"]["run"]["command"][0], "/bin/busybox");
    assert_eq!(detail["manifest"]["ports"][0]["port"], 8080);
    assert_eq!(detail["manifest"]["ports"][0]["publish"], "none");
    let ps: serde_json::Value = serde_json::from_str(&gw.shg_ok(&["ps", "--json"]).stdout).unwrap();
    assert_eq!(ps[0]["unsigned"], false, "{ps}");

    // A new manifest for the same image, signed in turn, is an update.
    let next = write(&gw, "std-1.1.toml", &manifest("std", "1.1.0", "updated"));
    let out = shg(
        &gw,
        &["sign", &reference, "--manifest", &next, "--key", key],
    );
    assert!(out.ok(), "{out}");
    let out = shg(
        &gw,
        &[
            "update",
            "std",
            &reference,
            "--manifest",
            &next,
            "--window",
            "1s",
        ],
    );
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    assert_eq!(gw.wait_running("std").version, "1.1.0");
    eventually("the new release's line", Duration::from_secs(10), || {
        gw.shg(&["logs", "std"])
            .stdout
            .contains("mode=updated")
            .then_some(())
    });
    gw.shg_ok(&["remove", "std"]);

    // The gateway pulling by itself takes the manifest along too.
    let out = shg(
        &gw,
        &[
            "install",
            "--pull-on-gateway",
            &reference,
            "--manifest",
            &signed,
        ],
    );
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    gw.wait_running("std");
    gw.shg_ok(&["remove", "std"]);
}

#[test]
fn a_standard_image_file_installs_with_its_manifest_beside_it() {
    let gw = Gateway::start();
    let archive = build_image(&gw.work);
    let file = archive.to_str().unwrap();
    let key = gw.trusted_key("acme");
    let key = key.to_str().unwrap();
    let signed = write(&gw, "file.toml", &manifest("std-file", "2.0.0", "file"));

    let out = gw.shg(&["install", file]);
    assert!(
        !out.ok() && out.stderr.contains("--manifest shg-service.toml"),
        "{out}"
    );
    // Signed in the file itself (its index.json), with the manifest it installs with.
    let out = shg(&gw, &["sign", file, "--manifest", &signed, "--key", key]);
    assert!(out.ok(), "{out}");
    let swapped = write(
        &gw,
        "file-swapped.toml",
        &manifest("std-file", "2.0.0", "file").replace("16MiB", "32MiB"),
    );
    let out = gw.shg(&["install", file, "--manifest", &swapped]);
    assert!(
        !out.ok() && out.stderr.contains("with another shg-service.toml"),
        "{out}"
    );

    let out = gw.shg(&["install", file, "--manifest", &signed]);
    assert!(out.ok(), "{out}\n--- agent log\n{}", gw.agent_log());
    gw.wait_running("std-file");
    let line = first_line(&gw, "std-file");
    assert!(
        line.contains("hello from /srv as 1000:1000 mode=file"),
        "{line}"
    );
    gw.shg_ok(&["remove", "std-file"]);
}
