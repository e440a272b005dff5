//! `shg lab demo`: the papers' demonstration, run over a lab that is up. Each step says what
//! it does, does it through the same commands a person would type (the operator on the
//! controller, a household and a provider on their gateway), and checks what should follow;
//! the first check that fails ends the demo with what was seen.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Lab, LabError};

/// How long a step may wait for the fleet to settle.
const SETTLE: Duration = Duration::from_secs(120);

/// The demo's provider and its service.
pub const PROVIDER: &str = "acme";
pub const SERVICE: &str = "probe";

/// A manifest of `probe`: prints that it is alive every second, restarted whatever happens.
pub fn probe(version: &str, command: &str) -> String {
    format!(
        r#"name = "{SERVICE}"
version = "{version}"
provider = "{PROVIDER}"
description = "A network probe of the ISP's partner: reports the line's health"
[run]
command = ["/bin/sh", "-c", "{command}"]
[resources]
cpu = {{ reserve = 0.05 }}
memory = {{ reserve = "8MiB", limit = "32MiB" }}
storage = {{ reserve = "8MiB" }}
[restart]
policy = "always"
"#
    )
}

pub struct Demo<'a> {
    lab: &'a Lab,
    out: &'a mut dyn Write,
    work: PathBuf,
    /// Gateway names by region, in the lab's order.
    regions: Vec<(String, Vec<String>)>,
}

impl<'a> Demo<'a> {
    pub fn new(lab: &'a Lab, out: &'a mut dyn Write) -> Demo<'a> {
        let mut regions: Vec<(String, Vec<String>)> = Vec::new();
        for gw in &lab.plan().gateways {
            match regions.iter_mut().find(|(r, _)| *r == gw.region) {
                Some((_, names)) => names.push(gw.name.clone()),
                None => regions.push((gw.region.clone(), vec![gw.name.clone()])),
            }
        }
        Demo {
            work: lab.plan().dir.join("demo"),
            lab,
            out,
            regions,
        }
    }

    fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn step(&mut self, n: u32, text: &str) {
        self.say(&format!("\n[{n}] {text}"));
    }

    fn ok(&mut self, text: &str) {
        self.say(&format!("    ok: {text}"));
    }

    /// Runs every step; the first failed check ends it.
    pub fn run(mut self) -> Result<(), LabError> {
        let (first_region, first) = self.regions.first().cloned().ok_or_else(|| {
            LabError("the lab has no gateway: `shg lab up --gateways 3 --regions 2`".into())
        })?;
        let household = self
            .regions
            .get(1)
            .and_then(|(_, names)| names.first().cloned())
            .unwrap_or_else(|| first[0].clone());
        if first.len() < 2 {
            return Err(LabError(format!(
                "the demo's canary needs two gateways in region {first_region}: `shg lab up --gateways 3 --regions 2` or more"
            )));
        }
        std::fs::create_dir_all(&self.work)
            .map_err(|e| LabError(format!("{}: {e}", self.work.display())))?;

        self.step(
            1,
            "The operator's gateways are enrolled with the controller",
        );
        let total = self.lab.plan().gateways.len();
        self.wait("every gateway online", |d| {
            let rows = d.fleet_json(&["gateways"])?;
            let online = rows
                .as_array()
                .map_or(0, |r| r.iter().filter(|g| g["online"] == true).count());
            Ok((online == total).then_some(()))
        })?;
        self.ok(&format!(
            "{total} gateway(s) online, labelled by region and link"
        ));

        self.step(
            2,
            "A provider's signed packages reach the catalog; the operator approves them",
        );
        let key = self.key(PROVIDER)?;
        self.lab.fleet(&[
            "trust",
            "add",
            "--provider",
            PROVIDER,
            &path(&key.with_extension("pub")),
            "--services",
            SERVICE,
        ])?;
        let voltwise = self.key("voltwise")?;
        self.lab.fleet(&[
            "trust",
            "add",
            "--provider",
            "voltwise",
            &path(&voltwise.with_extension("pub")),
        ])?;
        let good = self.package(
            "probe-1.0",
            &probe("1.0", "while true; do echo probe 1.0 alive; sleep 1; done"),
            &key,
        )?;
        let bad = self.package(
            "probe-2.0",
            &probe("2.0", "echo probe 2.0 is broken; exit 3"),
            &key,
        )?;
        let late = self.package(
            "probe-1.1",
            &probe("1.1", "while true; do echo probe 1.1 alive; sleep 1; done"),
            &key,
        )?;
        let meter = self.sample("meter", &voltwise)?;
        for (tar, name, version) in [
            (&good, SERVICE, "1.0"),
            (&bad, SERVICE, "2.0"),
            (&late, SERVICE, "1.1"),
            (&meter, "meter", "0.3.1"),
        ] {
            self.lab.fleet(&["publish", &path(tar)])?;
            self.lab.fleet(&["approve", name, version])?;
        }
        self.ok("probe 1.0, 1.1, 2.0 (acme) and meter 0.3.1 (voltwise) approved");

        self.step(
            3,
            &format!("The operator deploys probe 1.0 to region {first_region} only"),
        );
        let d = self.deploy(
            "probe:1.0",
            &format!("region={first_region}"),
            "1,100%",
            "2s",
        )?;
        self.wait_deployment(&d, "done")?;
        for gw in &first {
            self.wait_version(gw, "1.0")?;
        }
        for (region, names) in self.regions.iter().skip(1) {
            for gw in names {
                if self.version_on(gw)?.is_some() {
                    return Err(LabError(format!(
                        "{gw} in {region} got probe, outside the selector"
                    )));
                }
            }
        }
        self.ok(&format!(
            "probe 1.0 runs on {} and nowhere else",
            first.join(", ")
        ));

        self.step(
            4,
            &format!(
                "A household on {household} installs meter from the catalog and ranks it first"
            ),
        );
        let home = self.token(&household, &["--home"])?;
        let catalog = self
            .lab
            .shg_on(&household, &["subscriptions", "--catalog"], Some(&home))?;
        if !catalog.contains("meter") {
            return Err(LabError(format!(
                "the catalog on {household} does not offer meter:\n{catalog}"
            )));
        }
        self.lab
            .shg_on(&household, &["subscribe", "meter"], Some(&home))?;
        self.wait(&format!("meter running on {household}"), |d| {
            Ok(d.service(&household, "meter", Some(&home))?
                .filter(|s| s["state"] == "running"))
        })?;
        self.lab
            .shg_on(&household, &["priority", "meter", "90"], Some(&home))?;
        let seen = self
            .service(&household, "meter", Some(&home))?
            .unwrap_or_default();
        if seen["priority"] != 90 {
            return Err(LabError(format!("meter's priority is not 90: {seen}")));
        }
        self.ok("the household sees meter running, ranked 90, in its own view (its console's API)");

        self.step(
            5,
            "The provider watches probe across the fleet and reads its logs on a gateway",
        );
        let acme_fleet = self
            .lab
            .fleet(&["token", "create", "--provider", PROVIDER])?
            .trim()
            .to_string();
        let across = self
            .lab
            .fleet(&["--token", &acme_fleet, "services", "--json"])?;
        let across: Value =
            serde_json::from_str(&across).map_err(|e| LabError(format!("fleet services: {e}")))?;
        let row = across
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == SERVICE).cloned())
            .ok_or_else(|| {
                LabError(format!(
                    "acme does not see probe across the fleet: {across}"
                ))
            })?;
        if row["running"].as_u64() != Some(first.len() as u64) {
            return Err(LabError(format!(
                "probe should run on {} gateways: {row}",
                first.len()
            )));
        }
        if across
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["name"] == "meter"))
        {
            return Err(LabError(format!("acme sees voltwise's meter: {across}")));
        }
        let acme_gw = self.token(&first[0], &["--provider", PROVIDER])?;
        let logs = self
            .lab
            .shg_on(&first[0], &["logs", SERVICE], Some(&acme_gw))?;
        if !logs.contains("probe 1.0 alive") {
            return Err(LabError(format!("probe's logs on {}: {logs}", first[0])));
        }
        self.ok(&format!("acme sees probe running on {} gateway(s), and not meter; its logs on {} say `probe 1.0 alive`", first.len(), first[0]));

        self.step(
            6,
            &format!("probe crashes on {} and the gateway restarts it", first[0]),
        );
        let before = self.service(&first[0], SERVICE, None)?.unwrap_or_default();
        let pid = before["pid"]
            .as_i64()
            .ok_or_else(|| LabError(format!("probe has no pid: {before}")))?;
        let restarts = before["restarts"].as_u64().unwrap_or(0);
        // SAFETY-free: a plain kill(1) of the service's main process, as a crash would end it.
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        if !killed.is_ok_and(|s| s.success()) {
            return Err(LabError(format!("cannot kill probe's process {pid}")));
        }
        self.wait("probe restarted", |d| {
            Ok(d.service(&first[0], SERVICE, None)?.filter(|s| {
                s["state"] == "running"
                    && s["restarts"].as_u64().unwrap_or(0) > restarts
                    && s["pid"].as_i64() != Some(pid)
            }))
        })?;
        self.ok("killed; running again with a new process, its restart counted");

        self.step(7, &format!("A bad release, probe 2.0, goes to region {first_region} in waves: the canary fails, the rest never see it"));
        let d = self.deploy(
            "probe:2.0",
            &format!("region={first_region}"),
            "1,100%",
            "3s",
        )?;
        let aborted = self.wait_deployment(&d, "aborted")?;
        let reached = aborted["targets"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| !t["wave"].is_null()).count());
        if reached != 1 {
            return Err(LabError(format!(
                "the deployment reached {reached} gateways, not the canary alone: {aborted}"
            )));
        }
        for gw in &first {
            self.wait_version(gw, "1.0")?;
        }
        self.ok(&format!(
            "aborted after the canary ({}); every gateway of {first_region} runs probe 1.0 again",
            aborted["reason"].as_str().unwrap_or("")
        ));

        let cut = first[first.len() - 1].clone();
        self.step(8, &format!("{cut} loses its WAN link while probe 1.1 is deployed, and catches up when it is back"));
        self.lab.link(&cut, false)?;
        self.wait(&format!("{cut} offline at the controller"), |d| {
            d.online(&cut).map(|o| (!o).then_some(()))
        })?;
        self.ok(&format!("{cut} is offline; it keeps running probe 1.0"));
        let d = self.deploy("probe:1.1", &format!("region={first_region}"), "100%", "2s")?;
        for gw in first.iter().filter(|g| **g != cut) {
            self.wait_version(gw, "1.1")?;
        }
        if self.version_on(&cut)?.as_deref() != Some("1.0") {
            return Err(LabError(format!("{cut} changed while cut off")));
        }
        self.ok("the others run probe 1.1; the cut-off gateway still runs 1.0");
        self.lab.link(&cut, true)?;
        let back = Instant::now();
        self.wait_version(&cut, "1.1")?;
        self.wait_deployment(&d, "done")?;
        self.ok(&format!(
            "link back: {cut} caught up in {:.0} s, the deployment is done",
            back.elapsed().as_secs_f64()
        ));

        self.say("\nThe demonstration ran to the end.");
        Ok(())
    }

    /// Waits until `check` gives something, for at most [`SETTLE`].
    fn wait<T>(
        &mut self,
        what: &str,
        mut check: impl FnMut(&Self) -> Result<Option<T>, LabError>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + SETTLE;
        let mut last = None;
        loop {
            match check(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = Some(e.0),
            }
            if Instant::now() > deadline {
                return Err(LabError(format!(
                    "timed out after {} s waiting for {what}{}",
                    SETTLE.as_secs(),
                    last.map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn fleet_json(&self, args: &[&str]) -> Result<Value, LabError> {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.lab.fleet(&all)?;
        serde_json::from_str(&text)
            .map_err(|e| LabError(format!("`shg fleet {}`: {e}", args.join(" "))))
    }

    fn online(&self, gw: &str) -> Result<bool, LabError> {
        let id = self.lab.gateway_id(gw)?;
        let rows = self.fleet_json(&["gateways"])?;
        Ok(rows
            .as_array()
            .and_then(|r| r.iter().find(|g| g["id"].as_str() == Some(&id)).cloned())
            .is_some_and(|g| g["online"] == true))
    }

    /// A service on a gateway as `shg ps` shows it (to the operator, or to `token`).
    fn service(
        &self,
        gw: &str,
        name: &str,
        token: Option<&str>,
    ) -> Result<Option<Value>, LabError> {
        let text = self.lab.shg_on(gw, &["ps", "--json"], token)?;
        let list: Value =
            serde_json::from_str(&text).map_err(|e| LabError(format!("shg ps on {gw}: {e}")))?;
        Ok(list
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name).cloned()))
    }

    fn version_on(&self, gw: &str) -> Result<Option<String>, LabError> {
        Ok(self
            .service(gw, SERVICE, None)?
            .and_then(|s| s["version"].as_str().map(String::from)))
    }

    fn wait_version(&mut self, gw: &str, version: &str) -> Result<(), LabError> {
        self.wait(&format!("probe {version} running on {gw}"), |d| {
            Ok(d.service(gw, SERVICE, None)?
                .filter(|s| s["version"] == version && s["state"] == "running")
                .map(|_| ()))
        })
    }

    fn deploy(
        &mut self,
        what: &str,
        selector: &str,
        waves: &str,
        soak: &str,
    ) -> Result<String, LabError> {
        let d = self.fleet_json(&[
            "deploy",
            what,
            "--selector",
            selector,
            "--waves",
            waves,
            "--max-failures",
            "0",
            "--soak",
            soak,
        ])?;
        let id = d["id"]
            .as_str()
            .ok_or_else(|| LabError(format!("no deployment id in {d}")))?
            .to_string();
        self.say(&format!("    $ shg fleet deploy {what} --selector {selector} --waves {waves} --max-failures 0 --soak {soak}  → {id}"));
        Ok(id)
    }

    fn wait_deployment(&mut self, id: &str, state: &str) -> Result<Value, LabError> {
        self.wait(&format!("deployment {id} to be {state}"), |d| {
            let dep = d.fleet_json(&["deployment", id])?;
            if dep["state"] == state {
                return Ok(Some(dep));
            }
            if matches!(
                dep["state"].as_str(),
                Some("done" | "aborted" | "cancelled")
            ) {
                return Err(LabError(format!(
                    "deployment {id} ended {} instead: {dep}",
                    dep["state"]
                )));
            }
            Ok(None)
        })
    }

    /// A token made by the operator on `gw` (`shg token create ARGS`).
    fn token(&self, gw: &str, args: &[&str]) -> Result<String, LabError> {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        Ok(self.lab.shg_on(gw, &all, None)?.trim().to_string())
    }

    /// The provider's signing key (made once), `WORK/PROVIDER.key` beside its `.pub`.
    pub fn key(&self, provider: &str) -> Result<PathBuf, LabError> {
        let key = self.work.join(format!("{provider}.key"));
        if !key.exists() {
            std::fs::create_dir_all(&self.work)
                .map_err(|e| LabError(format!("{}: {e}", self.work.display())))?;
            self.lab
                .shg(&["key", "gen", provider, "--dir", &path(&self.work)])?;
        }
        Ok(key)
    }

    /// Packs `manifest` over a busybox root and signs it with `key`.
    pub fn package(&self, name: &str, manifest: &str, key: &Path) -> Result<PathBuf, LabError> {
        let dir = self.work.join(name);
        let busybox = samples::find_busybox().map_err(|e| LabError(e.to_string()))?;
        samples::busybox_rootfs(&dir.join("rootfs"), &busybox)
            .map_err(|e| LabError(e.to_string()))?;
        std::fs::write(dir.join("shg-service.toml"), manifest)
            .map_err(|e| LabError(format!("{}: {e}", dir.display())))?;
        self.pack(&dir, key)
    }

    /// One of the sample services, signed with `key`.
    fn sample(&self, name: &str, key: &Path) -> Result<PathBuf, LabError> {
        let sample = samples::SAMPLES
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| LabError(format!("no sample `{name}`")))?;
        let busybox = samples::find_busybox().map_err(|e| LabError(e.to_string()))?;
        let dir = samples::build_dir(sample, &self.work, &busybox)
            .map_err(|e| LabError(e.to_string()))?;
        self.pack(&dir, key)
    }

    fn pack(&self, dir: &Path, key: &Path) -> Result<PathBuf, LabError> {
        let mut tar = dir.as_os_str().to_owned();
        tar.push(".tar");
        let tar = PathBuf::from(tar);
        self.lab.shg(&["pack", &path(dir), "-o", &path(&tar)])?;
        self.lab.shg(&["sign", &path(&tar), "--key", &path(key)])?;
        Ok(tar)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
