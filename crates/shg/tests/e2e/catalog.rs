//! The two-key rule: with a catalog configured, a package installs or updates only when a
//! trusted provider key signed it AND the catalog's TUF metadata lists that exact digest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{run_captured, Gateway, Out, SHG};

fn app(version: &str, note: &str) -> String {
    format!(
        "name = \"app\"\nversion = \"{version}\"\nprovider = \"acme\"\ndescription = \"{note}\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n"
    )
}

/// `shg catalog ARGS…` (the publisher's side needs no gateway).
fn catalog(args: &[&str], scratch: &Path) -> Out {
    let mut cmd = Command::new(SHG);
    cmd.arg("catalog").args(args);
    let out = run_captured(cmd, scratch, Duration::from_secs(60));
    assert!(out.ok(), "shg catalog {args:?} failed:\n{out}");
    out
}

struct Repo {
    dir: PathBuf,
    keys: PathBuf,
}

impl Repo {
    fn publish(&self, packages: &[&Path], expires_in: &str) {
        let mut args = vec![
            "publish",
            self.dir.to_str().unwrap(),
            "--keys",
            self.keys.to_str().unwrap(),
            "--expires-in",
            expires_in,
        ];
        args.extend(packages.iter().map(|p| p.to_str().unwrap()));
        catalog(&args, &self.dir);
    }
}

fn refused(out: &Out, needle: &str) {
    assert!(
        !out.ok() && out.stderr.contains(needle),
        "want {needle:?}: {out}"
    );
}

#[test]
fn only_what_the_catalog_lists_and_a_trusted_key_signed_installs() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = Repo {
        dir: scratch.path().join("repo"),
        keys: scratch.path().join("keys"),
    };
    catalog(
        &[
            "init",
            repo.dir.to_str().unwrap(),
            "--keys",
            repo.keys.to_str().unwrap(),
        ],
        scratch.path(),
    );
    let config = format!(
        "[catalog]\nmetadata = \"{}\"\ntargets = \"{}\"\nroot = \"{}\"\n",
        repo.dir.join("metadata").display(),
        repo.dir.join("targets").display(),
        repo.dir.join("metadata/1.root.json").display()
    );
    let gw = Gateway::start_with_config(Some(&config));
    let v1 = gw.package("app-1", &app("1.0.0", "first"), &[]);

    // Signed by a trusted key, but not in the catalog: an arbitrary package.
    let out = gw.shg(&["install", v1.to_str().unwrap()]);
    refused(&out, "the catalog does not list `acme/app` 1.0.0");
    assert!(gw.svc("app").is_none());

    repo.publish(&[&v1], "7d");
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.wait_running("app");
    // Publication 2 as it is now, for the rollback below.
    let old_metadata = scratch.path().join("metadata-2");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(repo.dir.join("metadata"))
        .arg(&old_metadata)
        .status()
        .unwrap();
    assert!(copied.success());

    // The same version built again (another digest) is not what the catalog lists.
    let twin = gw.package("app-twin", &app("1.0.0", "a different build"), &[]);
    gw.shg_ok(&["remove", "app"]);
    let out = gw.shg(&["install", twin.to_str().unwrap()]);
    refused(&out, "not sha256:");
    gw.shg_ok(&["install", v1.to_str().unwrap()]);

    // An update must be listed too.
    let v2 = gw.package("app-2", &app("2.0.0", "second"), &[]);
    let out = gw.shg(&["update", "app", v2.to_str().unwrap(), "--window", "1s"]);
    refused(&out, "the catalog does not list `acme/app` 2.0.0");
    repo.publish(&[&v2], "7d");
    gw.shg_ok(&["update", "app", v2.to_str().unwrap(), "--window", "1s"]);
    assert_eq!(gw.wait_running("app").version, "2.0.0");

    // Rollback attack: the server serves publication 2 again after the gateway saw 3.
    let current = scratch.path().join("metadata-current");
    std::fs::rename(repo.dir.join("metadata"), &current).unwrap();
    std::fs::rename(&old_metadata, repo.dir.join("metadata")).unwrap();
    gw.shg_ok(&["remove", "app"]);
    let out = gw.shg(&["install", v1.to_str().unwrap()]);
    refused(&out, "(rollback)");
    std::fs::remove_dir_all(repo.dir.join("metadata")).unwrap();
    std::fs::rename(&current, repo.dir.join("metadata")).unwrap();
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.shg_ok(&["remove", "app"]);

    // Frozen metadata: a publication that expired is refused until a fresh one comes.
    repo.publish(&[], "2s");
    std::thread::sleep(Duration::from_secs(3));
    let out = gw.shg(&["install", v1.to_str().unwrap()]);
    refused(&out, "(frozen metadata)");
    repo.publish(&[], "7d");
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.shg_ok(&["remove", "app"]);
}
