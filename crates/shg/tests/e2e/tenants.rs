//! Two providers, one service name: each installs, runs, reads and removes its own `probe`
//! without learning of the other's; the operator and the household, who see both, name one
//! as `PROVIDER/NAME`; on the host the two stay apart.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, run_captured, Gateway, Out, SHG};

fn probe(provider: &str) -> String {
    format!(
        "name = \"probe\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\n\
         [run]\ncommand = [\"/bin/sh\", \"-c\", \"echo probe of {provider}; exec sleep 100000\"]\n"
    )
}

/// `shg ARGS…` as the holder of `token` (a provider's), as that provider would run it.
fn shg_as(gw: &Gateway, token: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(SHG);
    cmd.args(args)
        .env("SHG_GATEWAY", gw.socket())
        .env("SHG_TOKEN", token);
    run_captured(cmd, &gw.work, Duration::from_secs(60))
}

fn ok(out: Out, what: &str) -> String {
    assert!(out.ok(), "{what}:\n{out}");
    out.stdout
}

fn list(gw: &Gateway, token: Option<&str>) -> Vec<Value> {
    let out = match token {
        Some(t) => shg_as(gw, t, &["ps", "--json"]),
        None => gw.shg(&["ps", "--json"]),
    };
    serde_json::from_str(&ok(out, "shg ps --json")).unwrap()
}

/// The state `shg ps` shows for the service `id`, as the operator sees it.
fn state(gw: &Gateway, id: &str) -> String {
    list(gw, None)
        .into_iter()
        .find(|s| s["id"] == id)
        .map(|s| s["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn ids(services: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = services
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn two_providers_each_run_a_service_of_the_same_name_without_learning_of_the_other() {
    let mut gw = Gateway::start();
    let acme = gw.provider_token("acme");
    let rival = gw.provider_token("vodco");
    let acme_pkg = gw.package("probe-acme", &probe("acme"), &[]);
    let rival_pkg = gw.package("probe-vodco", &probe("vodco"), &[]);

    ok(
        shg_as(&gw, &acme, &["install", acme_pkg.to_str().unwrap()]),
        "acme installs its probe",
    );
    // The rival's install of the same name succeeds, and says nothing of acme's.
    let out = shg_as(&gw, &rival, &["install", rival_pkg.to_str().unwrap()]);
    assert!(out.ok(), "the rival installs its own probe:\n{out}");
    assert!(!format!("{out}").contains("acme"), "{out}");

    // Each provider sees one probe: its own.
    for (token, id) in [(&acme, "acme/probe"), (&rival, "vodco/probe")] {
        let seen = list(&gw, Some(token));
        assert_eq!(ids(&seen), [id]);
        assert_eq!(seen[0]["name"], "probe");
    }
    // The operator sees both, each under its id.
    assert_eq!(ids(&list(&gw, None)), ["acme/probe", "vodco/probe"]);

    // Bare names work for the providers, each reaching its own service.
    for (token, provider) in [(&acme, "acme"), (&rival, "vodco")] {
        let logs = eventually("the probe's first line", Duration::from_secs(20), || {
            let out = shg_as(&gw, token, &["logs", "probe"]);
            (out.ok() && out.stdout.contains("probe of")).then_some(out.stdout)
        });
        assert!(logs.contains(&format!("probe of {provider}")), "{logs}");
        assert!(
            !logs.contains("probe of acme") || provider == "acme",
            "{logs}"
        );
        let host = ok(
            shg_as(&gw, token, &["exec", "probe", "--", "hostname"]),
            "hostname inside",
        );
        assert_eq!(
            host.trim(),
            "probe",
            "the hostname is the service's own name"
        );
    }

    // Naming a rival's service by its id is answered as for a service that does not exist.
    let out = shg_as(&gw, &rival, &["stop", "acme/probe"]);
    assert!(!out.ok(), "{out}");
    let missing = shg_as(&gw, &rival, &["stop", "nosuch/probe"]);
    assert_eq!(out.code, missing.code);
    assert_eq!(
        out.stderr.replace("acme/probe", "X"),
        missing.stderr.replace("nosuch/probe", "X"),
        "a rival's service answers exactly like a missing one"
    );

    // The operator sees both: the bare name is ambiguous, and the refusal says how to name one.
    let out = gw.shg(&["stop", "probe"]);
    assert!(!out.ok(), "{out}");
    for needle in ["`acme/probe`", "`vodco/probe`", "PROVIDER/NAME"] {
        assert!(out.stderr.contains(needle), "missing {needle}:\n{out}");
    }
    gw.shg_ok(&["stop", "acme/probe"]);
    assert_eq!(state(&gw, "acme/probe"), "stopped");
    assert_eq!(state(&gw, "vodco/probe"), "running");

    // On the host they are two: two directories, two containers.
    assert!(gw.dir.join("services/probe").is_dir());
    assert!(gw.dir.join("services/vodco+probe").is_dir());

    // The events of one are told apart from the other's.
    let events: Vec<Value> = serde_json::from_str(&ok(
        gw.shg(&["events", "--service", "vodco/probe", "--json"]),
        "events of vodco/probe",
    ))
    .unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["service"] == "vodco/probe"),
        "{events:?}"
    );

    // Both survive an agent crash under their own identity.
    gw.kill9();
    gw.restart_agent();
    gw.shg_ok(&["start", "acme/probe"]);
    eventually("both probes running", Duration::from_secs(20), || {
        (state(&gw, "acme/probe") == "running" && state(&gw, "vodco/probe") == "running")
            .then_some(())
    });

    // The rival removes its probe; acme's stays, and the bare name is unambiguous again.
    ok(
        shg_as(&gw, &rival, &["remove", "probe"]),
        "the rival removes its probe",
    );
    assert_eq!(ids(&list(&gw, None)), ["acme/probe"]);
    assert!(!gw.dir.join("services/vodco+probe").exists());
    gw.shg_ok(&["stop", "probe"]);
    assert_eq!(state(&gw, "acme/probe"), "stopped");
    gw.shg_ok(&["remove", "probe"]);
}
