//! The trust chain: only packages a key the operator trusts signed, for that provider and that
//! service name, install; the development override is the operator's alone and shows.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::Gateway;

fn sleeper(name: &str, provider: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\n\
         [run]\ncommand = [\"/bin/sleep\", \"100000\"]\n"
    )
}

/// `shg key gen PROVIDER --dir DIR`; returns (secret, public, key id).
fn key_gen(gw: &Gateway, provider: &str, dir: &str) -> (PathBuf, PathBuf, String) {
    let dir = gw.work.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = gw.shg_ok(&[
        "key",
        "gen",
        provider,
        "--json",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let made: Value = serde_json::from_str(&out.stdout).unwrap();
    (
        PathBuf::from(made["secret_key"].as_str().unwrap()),
        PathBuf::from(made["public_key"].as_str().unwrap()),
        made["key_id"].as_str().unwrap().to_string(),
    )
}

fn sign_with(gw: &Gateway, tar: &Path, key: &Path) {
    gw.shg_ok(&[
        "sign",
        tar.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
}

fn refused(gw: &Gateway, tar: &Path, extra: &[&str], needle: &str) {
    let mut args = vec!["install"];
    args.extend_from_slice(extra);
    args.push(tar.to_str().unwrap());
    let out = gw.shg(&args);
    assert!(
        !out.ok() && out.stderr.contains(needle),
        "want a refusal saying {needle:?}: {out}"
    );
}

fn ps_json(gw: &Gateway) -> Vec<Value> {
    serde_json::from_str(&gw.shg_ok(&["ps", "--json"]).stdout).unwrap()
}

#[test]
fn only_what_a_trusted_key_signed_for_that_name_installs() {
    let gw = Gateway::start();
    let (secret, public, id) = key_gen(&gw, "acme", "acme-keys");

    // Unsigned: refused, saying how to sign and that the override is the operator's.
    let cam = gw.package_unsigned("cam-front", &sleeper("cam-front", "acme"), &[]);
    refused(&gw, &cam, &[], "is unsigned");
    refused(&gw, &cam, &["--dry-run"], "--allow-unsigned");

    // Signed by a key nobody trusts yet: refused, naming the key and the way out.
    sign_with(&gw, &cam, &secret);
    refused(&gw, &cam, &[], &format!("signed by key {id}"));
    refused(&gw, &cam, &[], "shg trust add --provider acme");

    // Trusted for `cam-*` only: cam-front installs, vod (same provider) does not.
    let rule = gw.shg_ok(&[
        "trust",
        "add",
        "--provider",
        "acme",
        public.to_str().unwrap(),
        "--services",
        "cam-*",
    ]);
    assert!(rule.stdout.contains("cam-*"), "{rule}");
    gw.shg_ok(&["install", cam.to_str().unwrap()]);
    let vod = gw.package_unsigned("vod", &sleeper("vod", "acme"), &[]);
    sign_with(&gw, &vod, &secret);
    refused(&gw, &vod, &[], "may publish only `cam-*`, not `vod`");
    let listed = ps_json(&gw);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["signed_by"], id.as_str());
    assert_eq!(listed[0]["unsigned"], false);

    // A rival provider's trusted key cannot publish in acme's name.
    let (rival_secret, rival_public, rival_id) = key_gen(&gw, "vodco", "vodco-keys");
    gw.shg_ok(&[
        "trust",
        "add",
        "--provider",
        "vodco",
        rival_public.to_str().unwrap(),
    ]);
    let pretender = gw.package_unsigned("cam-back", &sleeper("cam-back", "acme"), &[]);
    let rival = trust::SecretKey::parse(
        &std::fs::read_to_string(&rival_secret).unwrap(),
        "vodco.key",
    )
    .unwrap();
    image::annotate(&pretender, |digest| {
        [rival.sign(digest).annotation()].into_iter().collect()
    })
    .unwrap();
    refused(&gw, &pretender, &[], &format!("signed by key {rival_id}"));
    // The key file must be named for the provider it is trusted for.
    let out = gw.shg(&[
        "trust",
        "add",
        "--provider",
        "acme",
        rival_public.to_str().unwrap(),
    ]);
    assert!(
        !out.ok() && out.stderr.contains("provider `vodco`'s, not `acme`'s"),
        "{out}"
    );

    // A signature moved onto another package (or a package changed after signing) is forged:
    // refused even with the development override.
    let other = gw.package_unsigned("cam-side", &sleeper("cam-side", "acme"), &[]);
    let staging = tempfile::tempdir().unwrap();
    let signed = image::open(&cam, &staging.path().join("p")).unwrap();
    image::annotate(&other, |_| signed.annotations.clone()).unwrap();
    refused(&gw, &other, &[], "does not match the package");
    refused(
        &gw,
        &other,
        &["--allow-unsigned"],
        "does not match the package",
    );

    // Removing the key stops new installs; what it admitted keeps running.
    let cam2 = gw.package_unsigned("cam-2", &sleeper("cam-2", "acme"), &[]);
    sign_with(&gw, &cam2, &secret);
    gw.shg_ok(&["trust", "remove", &id]);
    let list = gw.shg_ok(&["trust", "list"]);
    assert!(!list.stdout.contains(&id), "{list}");
    assert!(list.stdout.contains(&rival_id), "{list}");
    refused(&gw, &cam2, &[], "does not trust");
    gw.wait_running("cam-front");
    gw.shg_ok(&["remove", "cam-front"]);
}

#[test]
fn the_unsigned_override_is_the_operators_and_stays_visible() {
    let gw = Gateway::start();
    let dev = gw.package_unsigned("dev", &sleeper("dev", "acme"), &[]);

    // A provider may not use it, not even for its own service.
    let token = gw.provider_token("acme");
    let out = {
        let mut cmd = std::process::Command::new(crate::harness::SHG);
        cmd.args(["install", "--allow-unsigned", dev.to_str().unwrap()])
            .env("SHG_GATEWAY", gw.socket())
            .env("SHG_TOKEN", &token);
        crate::harness::run_captured(cmd, &gw.work, std::time::Duration::from_secs(60))
    };
    assert!(
        !out.ok()
            && out
                .stderr
                .contains("only the operator may install unsigned"),
        "{out}"
    );
    assert!(gw.svc("dev").is_none());

    // The operator may, and it shows: in the install's answer, ps, inspect and the JSON.
    let out = gw.shg_ok(&["install", "--allow-unsigned", dev.to_str().unwrap()]);
    assert!(out.stdout.contains("UNSIGNED"), "{out}");
    gw.wait_running("dev");
    let ps = gw.shg_ok(&["ps"]);
    assert!(ps.stdout.contains("1.0.0 UNSIGNED"), "{ps}");
    assert!(
        ps.stdout.contains("WARNING: dev runs UNSIGNED code"),
        "{ps}"
    );
    let listed = ps_json(&gw);
    assert_eq!(listed[0]["unsigned"], true);
    assert_eq!(listed[0]["signed_by"], Value::Null);
    let inspect = gw.shg_ok(&["inspect", "dev"]);
    assert!(inspect.stdout.contains("UNSIGNED"), "{inspect}");

    // A signed service next to it is not flagged.
    gw.install("cam", &sleeper("cam", "acme"), &[]);
    let ps = gw.shg_ok(&["ps"]);
    let cam_line = ps.stdout.lines().find(|l| l.starts_with("cam")).unwrap();
    assert!(!cam_line.contains("UNSIGNED"), "{ps}");
    gw.shg_ok(&["remove", "dev"]);
    gw.shg_ok(&["remove", "cam"]);
}
