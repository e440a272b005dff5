//! The fleet: a real controller and real agents as gateways, driven through `shg fleet` and
//! `shg gateway run --controller URL --enroll-token TOKEN` exactly as an operator drives them.
//! Enrollment, label-selected deployments in waves, a bad release aborted after its canary and
//! rolled back, a refusal for lack of memory reported with its reason, a controller outage the
//! gateways ride through, revocation, and hostile requests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{eventually, run_captured, signal, wait_timeout, Gateway, Out, SHG};

/// A throwaway PostgreSQL cluster (Debian's `postgresql`) on a free loopback port, owned by
/// the `postgres` user, stopped and deleted at the end.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/setup.sh installs Debian's postgresql)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql");
        let dir = tempfile::Builder::new()
            .prefix("shg-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let as_postgres = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        let data = dir.path().join("data");
        as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let port = testdata::free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.path().display()
        );
        as_postgres(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &options,
            "-l",
            dir.path().join("log").to_str().unwrap(),
            "-w",
            "start",
        ]);
        Postgres { dir, bin, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A fleet controller on a private state directory and a free loopback port.
struct Controller {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    database: Option<String>,
    /// More arguments for `shg controller run`.
    args: Vec<String>,
    child: Option<Child>,
}

impl Controller {
    fn start() -> Controller {
        Controller::start_on(None)
    }

    /// A controller on its embedded SQLite, run with more arguments.
    fn start_with(args: &[&str]) -> Controller {
        let mut c = Controller::start();
        c.stop();
        c.args = args.iter().map(|a| a.to_string()).collect();
        c.spawn();
        c
    }

    /// A controller on `database` (PostgreSQL), or on its embedded SQLite.
    fn start_on(database: Option<String>) -> Controller {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], testdata::free_port()));
        Controller::start_at(addr, database)
    }

    /// A controller on `addr` (another replica taking over an address, say).
    fn start_at(addr: std::net::SocketAddr, database: Option<String>) -> Controller {
        let dir = tempfile::Builder::new()
            .prefix("shg-ctl-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut c = Controller {
            dir,
            addr,
            database,
            args: Vec::new(),
            child: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))
            .unwrap();
        let mut cmd = Command::new(SHG);
        cmd.args(["controller", "run", "--state-dir"])
            .arg(self.dir.path().join("state"))
            .args(["--listen", &self.addr.to_string()]);
        if let Some(url) = &self.database {
            cmd.args(["--database", url]);
        }
        cmd.args(&self.args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        eventually("the controller answers", Duration::from_secs(20), || {
            self.try_fleet(&["catalog"]).ok().then_some(())
        });
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("the controller runs");
        signal(child.id() as i32, "TERM");
        wait_timeout(&mut child, Duration::from_secs(15)).expect("the controller exits");
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("state/api.sock")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("state/ca/ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// `shg fleet ARGS…` as root on the controller's socket: the operator.
    fn try_fleet(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(SHG);
        cmd.arg("fleet")
            .arg("--controller")
            .arg(self.socket())
            .args(args);
        run_captured(cmd, self.dir.path(), Duration::from_secs(60))
    }

    fn fleet(&self, args: &[&str]) -> Out {
        let out = self.try_fleet(args);
        assert!(
            out.ok(),
            "shg fleet {args:?} failed:\n{out}\n--- controller log\n{}",
            self.log()
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.fleet(&all).stdout).unwrap()
    }

    fn enroll_token(&self, labels: &str) -> String {
        self.fleet(&["enroll-token", "--labels", labels])
            .stdout
            .trim()
            .to_string()
    }

    /// A client of the controller's HTTPS API trusting its CA, with `token` if any.
    fn https(&self, token: Option<String>) -> api::Client {
        api::Client::with_options(
            &self.url(),
            &api::Options {
                token,
                ca_cert: Some(self.ca()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn deployment(&self, id: &str) -> Value {
        self.json(&["deployment", id])
    }

    fn wait_deployment(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = self.deployment(id);
            if d["state"] == state {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for deployment {id} to be {state}: {d:#}\n--- controller log\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, "TERM");
            if wait_timeout(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A provider `acme` with its key, trusted by the fleet's operator for `probe`.
fn trust_acme(ctl: &Controller, work: &std::path::Path) -> PathBuf {
    let out = run_captured(
        {
            let mut c = Command::new(SHG);
            c.args(["key", "gen", "acme", "--dir"]).arg(work);
            c
        },
        work,
        Duration::from_secs(30),
    );
    assert!(out.ok(), "{out}");
    ctl.fleet(&[
        "trust",
        "add",
        "--provider",
        "acme",
        work.join("acme.pub").to_str().unwrap(),
        "--services",
        "probe",
    ]);
    work.join("acme.key")
}

fn probe(version: &str, command: &str, memory: &str) -> String {
    format!(
        r#"name = "probe"
version = "{version}"
provider = "acme"
description = "a probe"
[run]
command = ["/bin/sh", "-c", "{command}"]
[resources]
cpu = {{ reserve = 0.05 }}
memory = {{ reserve = "{memory}", limit = "64MiB" }}
storage = {{ reserve = "16MiB" }}
"#
    )
}

/// Packs `manifest` on `gw`'s scratch space and signs it with `key`.
fn signed(gw: &Gateway, dir: &str, manifest: &str, key: &std::path::Path) -> PathBuf {
    let tar = gw.package_unsigned(dir, manifest, &[]);
    let mut cmd = Command::new(SHG);
    cmd.arg("sign").arg(&tar).arg("--key").arg(key);
    let out = run_captured(cmd, &gw.work, Duration::from_secs(30));
    assert!(out.ok(), "{out}");
    tar
}

fn gateway_id(gw: &Gateway) -> String {
    let text = std::fs::read_to_string(gw.dir.join("fleet/enrolled.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["gateway_id"].as_str().unwrap().to_string()
}

fn version_on(gw: &Gateway, name: &str) -> Option<(String, String)> {
    gw.svc(name).map(|s| (s.version, s.state))
}

#[test]
fn the_operator_deploys_to_a_label_subset_in_waves_and_a_bad_release_is_rolled_back() {
    waves_and_rollback(Controller::start());
}

#[test]
fn the_same_on_postgresql() {
    let pg = Postgres::start();
    waves_and_rollback(Controller::start_on(Some(pg.url())));
}

/// Two controller processes over one PostgreSQL: a change made through one reaches a gateway
/// long-polling the other at once, and the gateway moves to a third process (taking over the
/// first one's address) without noticing.
#[test]
fn replicas_over_one_postgresql_share_everything() {
    let pg = Postgres::start();
    let mut a = Controller::start_on(Some(pg.url()));
    let b = Controller::start_on(Some(pg.url()));
    // Enrolled through b's token, syncing with a.
    let gw = Gateway::start_enrolled(&a.url(), &b.enroll_token("region=lyon"), None);
    let key = trust_acme(&b, &gw.work);
    let v1 = signed(&gw, "probe-1", &probe("1.0", "sleep 100000", "16MiB"), &key);
    a.fleet(&["publish", v1.to_str().unwrap()]);
    b.fleet(&["approve", "probe", "1.0"]);
    let d = b.json(&[
        "deploy",
        "probe",
        "--selector",
        "region=lyon",
        "--soak",
        "1s",
    ]);
    let id = d["id"].as_str().unwrap().to_string();
    a.wait_deployment(&id, "done");
    assert_eq!(
        version_on(&gw, "probe"),
        Some(("1.0".into(), "running".into()))
    );

    // Replica a goes; c comes up on its address with nothing of its own.
    let addr = a.addr;
    a.stop();
    let c = Controller::start_at(addr, Some(pg.url()));
    let v2 = signed(&gw, "probe-2", &probe("2.0", "sleep 100001", "16MiB"), &key);
    b.fleet(&["publish", v2.to_str().unwrap()]);
    c.fleet(&["approve", "probe", "2.0"]);
    let d = b.json(&[
        "deploy",
        "probe:2.0",
        "--selector",
        "region=lyon",
        "--soak",
        "1s",
    ]);
    c.wait_deployment(d["id"].as_str().unwrap(), "done");
    assert_eq!(
        version_on(&gw, "probe"),
        Some(("2.0".into(), "running".into()))
    );
    let row = c.json(&["gateway", &gateway_id(&gw)]);
    assert_eq!(row["online"], true);
    drop(a);
}

fn waves_and_rollback(ctl: Controller) {
    let lyon: Vec<Gateway> = (0..2)
        .map(|_| {
            Gateway::start_enrolled(
                &ctl.url(),
                &ctl.enroll_token("region=lyon,access=adsl"),
                None,
            )
        })
        .collect();
    let paris = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=paris"), None);
    let ids: Vec<String> = lyon.iter().map(gateway_id).collect();

    // Inventory: every gateway online with its labels.
    let rows = eventually("three gateways online", Duration::from_secs(30), || {
        let rows = ctl.json(&["gateways"]);
        (rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["online"] == true)
            .count()
            == 3)
            .then_some(rows)
    });
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let selected = ctl.json(&["gateways", "--selector", "region=lyon"]);
    let mut selected: Vec<String> = selected
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect();
    selected.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(selected, expected);

    // A provider publishes; nothing reaches a gateway before the operator approves.
    let key = trust_acme(&ctl, &lyon[0].work);
    let good = signed(
        &lyon[0],
        "probe-1",
        &probe("1.0", "sleep 100000", "16MiB"),
        &key,
    );
    let bad = signed(&lyon[0], "probe-2", &probe("2.0", "exit 3", "16MiB"), &key);
    let acme = ctl
        .fleet(&["token", "create", "--provider", "acme"])
        .stdout
        .trim()
        .to_string();
    for pkg in [&good, &bad] {
        let mut cmd = Command::new(SHG);
        cmd.args(["fleet", "--controller", &ctl.url(), "--ca-cert"])
            .arg(ctl.ca())
            .args(["--token", &acme, "publish"])
            .arg(pkg);
        let out = run_captured(cmd, &lyon[0].work, Duration::from_secs(60));
        assert!(out.ok(), "{out}");
    }
    let refused = ctl.try_fleet(&["deploy", "probe:1.0", "--selector", "region=lyon"]);
    assert!(!refused.ok());
    assert!(refused.stderr.contains("not approved"), "{refused}");
    ctl.fleet(&["approve", "probe", "1.0"]);
    ctl.fleet(&["approve", "probe", "2.0"]);

    // 1.0 to the Lyon gateways, canary first.
    let d = ctl.json(&[
        "deploy",
        "probe:1.0",
        "--selector",
        "region=lyon",
        "--waves",
        "1,100%",
        "--soak",
        "1s",
    ]);
    let id = d["id"].as_str().unwrap().to_string();
    let reached = |d: &Value| {
        d["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| !t["wave"].is_null())
            .count()
    };
    assert_eq!(reached(&d), 1, "only the canary at first: {d}");
    let done = ctl.wait_deployment(&id, "done");
    assert!(
        done["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["outcome"] == "healthy"),
        "{done}"
    );
    for gw in &lyon {
        assert_eq!(
            version_on(gw, "probe"),
            Some(("1.0".into(), "running".into()))
        );
    }
    assert_eq!(paris.svc("probe"), None, "paris is not region=lyon");

    // The fleet's view of the service.
    let services = ctl.json(&["services"]);
    let probe_row = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "probe")
        .cloned()
        .unwrap();
    assert_eq!(probe_row["gateways"], 2);
    assert_eq!(probe_row["running"], 2);

    // 2.0 exits at once: the canary fails, the deployment aborts before the second wave and
    // the canary goes back to 1.0; the other gateway never sees 2.0.
    let d = ctl.json(&[
        "deploy",
        "probe:2.0",
        "--selector",
        "region=lyon",
        "--waves",
        "1,100%",
        "--soak",
        "2s",
    ]);
    let id2 = d["id"].as_str().unwrap().to_string();
    let canary = d["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| !t["wave"].is_null())
        .unwrap()["gateway_id"]
        .as_str()
        .unwrap()
        .to_string();
    let aborted = ctl.wait_deployment(&id2, "aborted");
    assert_eq!(reached(&aborted), 1, "no wave after the canary: {aborted}");
    assert!(
        aborted["reason"].as_str().unwrap().contains("failed"),
        "{aborted}"
    );
    for gw in &lyon {
        eventually("1.0 runs again", Duration::from_secs(60), || {
            (version_on(gw, "probe") == Some(("1.0".into(), "running".into()))).then_some(())
        });
    }
    let events = ctl.fleet(&["events"]).stdout;
    assert!(events.contains("deployment-aborted"), "{events}");
    assert!(
        events.contains(&format!("{canary} failed")),
        "the canary's failure is journaled: {events}"
    );

    // The provider sees its deployments; the gateways' inventory is the operator's.
    let provider = ctl.https(Some(acme.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, _) = rt
        .block_on(provider.raw("GET", "/v1/deployments", None))
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = rt
        .block_on(provider.raw("GET", "/v1/gateways", None))
        .unwrap();
    assert_eq!(status, 403);

    // A provider deploys its own service only where the operator's policy lets it.
    let as_acme = |args: &[&str]| {
        let mut cmd = Command::new(SHG);
        cmd.args(["fleet", "--controller", &ctl.url(), "--ca-cert"])
            .arg(ctl.ca())
            .args(["--token", &acme])
            .args(args);
        run_captured(cmd, &lyon[0].work, Duration::from_secs(60))
    };
    let deploy_lyon = [
        "deploy",
        "probe:1.0",
        "--selector",
        "region=lyon",
        "--soak",
        "1s",
    ];
    let refused = as_acme(&deploy_lyon);
    assert!(!refused.ok(), "{refused}");
    assert!(
        refused.stderr.contains("has not opened any gateway")
            && refused
                .stderr
                .contains("shg fleet policy set --provider acme"),
        "{refused}"
    );
    let before = ctl.json(&["deployments"]).as_array().unwrap().len();
    ctl.fleet(&[
        "policy",
        "set",
        "--provider",
        "acme",
        "--selector",
        "region=lyon",
    ]);
    let refused = as_acme(&["deploy", "probe:1.0", "--gateways", &gateway_id(&paris)]);
    assert!(!refused.ok(), "{refused}");
    assert!(
        refused
            .stderr
            .contains("outside where the operator lets provider `acme` deploy")
            && refused.stderr.contains("region=lyon"),
        "{refused}"
    );
    assert_eq!(
        ctl.json(&["deployments"]).as_array().unwrap().len(),
        before,
        "a refused deployment leaves no row"
    );
    let mut list = deploy_lyon.to_vec();
    list.push("--json");
    let out = as_acme(&list);
    assert!(out.ok(), "{out}");
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    ctl.wait_deployment(d["id"].as_str().unwrap(), "done");
    let mine = as_acme(&["policy", "list", "--json"]);
    let mine: Value = serde_json::from_str(&mine.stdout).unwrap();
    assert_eq!(mine[0]["provider"], "acme");
    assert_eq!(mine[0]["selectors"][0]["region"], "lyon");
    assert!(!as_acme(&["policy", "set", "--provider", "acme", "--everywhere"]).ok());
    ctl.fleet(&["policy", "clear", "--provider", "acme"]);
    assert!(
        !as_acme(&deploy_lyon).ok(),
        "a cleared policy closes every gateway"
    );
}

#[test]
fn a_gateway_refuses_what_does_not_fit_and_says_why() {
    let ctl = Controller::start();
    // 300 MiB of memory with 256 MiB kept back: 44 MiB for services.
    let small = "[capacity]\nmemory = \"300MiB\"\n[reserve]\nmemory = \"256MiB\"\n";
    let gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("model=small"), Some(small));
    let key = trust_acme(&ctl, &gw.work);
    let big = signed(
        &gw,
        "probe-big",
        &probe("1.0", "sleep 100000", "60MiB"),
        &key,
    );
    ctl.fleet(&["publish", big.to_str().unwrap()]);
    // Not in the household's catalog before the operator approves it.
    let early = gw.shg(&["subscribe", "probe"]);
    assert!(
        !early.ok() && early.stderr.contains("not in the fleet's catalog"),
        "{early}"
    );
    ctl.fleet(&["approve", "probe", "1.0"]);
    let catalog = gw.shg_ok(&["subscriptions", "--catalog"]).stdout;
    assert!(catalog.contains("probe"), "{catalog}");

    // The household subscribes on its own gateway; the controller makes it part of the
    // gateway's desired state; the gateway's admission refuses it, and says why.
    gw.shg_ok(&["subscribe", "probe"]);
    let id = gateway_id(&gw);
    let outcome = eventually(
        "the refusal reaches the controller",
        Duration::from_secs(60),
        || {
            let inv = ctl.json(&["gateway", &id]);
            inv["report"]["outcomes"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["name"] == "probe").cloned())
        },
    );
    assert_eq!(outcome["result"], "refused", "{outcome}");
    assert!(
        outcome["reason"].as_str().unwrap().contains("memory"),
        "the refusal names the resource: {outcome}"
    );
    let events = ctl.fleet(&["events"]).stdout;
    assert!(events.contains("service-refused"), "{events}");
    assert_eq!(gw.svc("probe"), None, "nothing was forced onto the gateway");
    let subs = gw.shg_ok(&["subscriptions", "--json"]).stdout;
    assert!(subs.contains("\"probe\""), "{subs}");

    // Deployed by the operator, the same refusal aborts the deployment.
    let d = ctl.json(&["deploy", "probe", "--gateways", &id, "--soak", "1s"]);
    let aborted = ctl.wait_deployment(d["id"].as_str().unwrap(), "aborted");
    assert!(
        aborted["reason"].as_str().unwrap().contains("memory"),
        "{aborted}"
    );
    gw.shg_ok(&["unsubscribe", "probe"]);
}

/// The two-key rule: an enrolled gateway pins the controller's catalog root and installs
/// only what that catalog lists *and* a trusted provider signed; it pulls by digest through the
/// controller's OCI registry, so a blob altered in the controller's store is refused.
#[test]
fn an_enrolled_gateway_installs_only_what_the_catalog_lists_and_pulls_it_by_digest() {
    let ctl = Controller::start();
    let gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=lyon"), None);
    let root = std::fs::read_to_string(gw.dir.join("fleet/catalog-root.json")).unwrap();
    let root: Value = serde_json::from_str(&root).unwrap();
    assert_eq!(
        root["signed"]["_type"], "root",
        "the catalog root is pinned: {root}"
    );
    let key = trust_acme(&ctl, &gw.work);
    let v1 = signed(&gw, "probe-1", &probe("1.0", "sleep 100000", "16MiB"), &key);
    ctl.fleet(&["publish", v1.to_str().unwrap()]);

    // A provider alone cannot push a package: signed and trusted, but not listed yet.
    let early = gw.shg(&["install", v1.to_str().unwrap()]);
    assert!(
        !early.ok()
            && early
                .stderr
                .contains("the catalog does not list `acme/probe` 1.0"),
        "{early}"
    );
    assert_eq!(gw.svc("probe"), None);

    // Approved, it is listed; the gateway hears of it with its desired state.
    ctl.fleet(&["approve", "probe", "1.0"]);
    eventually(
        "the approval reaches the gateway's catalog",
        Duration::from_secs(30),
        || {
            gw.shg(&["install", "--dry-run", v1.to_str().unwrap()])
                .ok()
                .then_some(())
        },
    );
    gw.shg_ok(&["install", v1.to_str().unwrap()]);
    gw.shg_ok(&["remove", "probe"]);

    // Deployed, it is pulled from the controller's registry by digest.
    let id = gateway_id(&gw);
    let d = ctl.json(&["deploy", "probe:1.0", "--gateways", &id, "--soak", "1s"]);
    ctl.wait_deployment(d["id"].as_str().unwrap(), "done");
    let detail: Value =
        serde_json::from_str(&gw.shg_ok(&["inspect", "probe", "--json"]).stdout).unwrap();
    let digest = ctl.json(&["catalog"])[0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail["source"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/acme/probe@{digest}"))),
        "{detail}"
    );

    // Version 2.0, its config altered in the controller's store after publication: the
    // gateway refuses the blob by its digest, reports why and keeps running 1.0.
    let v2 = signed(&gw, "probe-2", &probe("2.0", "sleep 100000", "16MiB"), &key);
    ctl.fleet(&["publish", v2.to_str().unwrap()]);
    ctl.fleet(&["approve", "probe", "2.0"]);
    {
        let db = rusqlite::Connection::open(ctl.dir.path().join("state/controller.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let config: String = db
            .query_row(
                "SELECT b.digest FROM package_blobs b JOIN packages p USING (provider, name, version)
                 WHERE b.version = '2.0' AND b.digest NOT IN (p.digest, p.signatures)
                 AND b.digest NOT IN (SELECT digest FROM package_blobs WHERE version = '1.0')
                 ORDER BY b.digest LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let changed = db
            .execute(
                "UPDATE oci_blobs SET data = CAST(upper(CAST(data AS TEXT)) AS BLOB) WHERE digest = ?1",
                [&config],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let d = ctl.json(&["deploy", "probe:2.0", "--gateways", &id, "--soak", "1s"]);
    let aborted = ctl.wait_deployment(d["id"].as_str().unwrap(), "aborted");
    assert!(
        aborted["reason"]
            .as_str()
            .unwrap()
            .contains("does not match its digest"),
        "{aborted}"
    );
    assert_eq!(version_on(&gw, "probe").unwrap().0, "1.0");
}

/// A gateway renews its certificate two thirds into its validity and keeps syncing with the
/// new one; the certificate it replaced ends when it expires.
#[test]
fn a_gateway_renews_its_certificate_and_the_old_one_expires() {
    let ctl = Controller::start_with(&["--gateway-cert-validity", "15s"]);
    let gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=lyon"), None);
    let dir = gw.dir.join("fleet");
    let first = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let (old_cert, old_key) = (gw.work.join("old-cert.pem"), gw.work.join("old-key.pem"));
    std::fs::copy(dir.join("cert.pem"), &old_cert).unwrap();
    std::fs::copy(dir.join("key.pem"), &old_key).unwrap();
    let old = api::Client::with_options(
        &ctl.url(),
        &api::Options {
            ca_cert: Some(dir.join("ca.pem")),
            client_cert: Some((old_cert, old_key)),
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = |client: &api::Client| {
        rt.block_on(client.raw("GET", "/v1/catalog", None))
            .unwrap()
            .0
    };
    assert_eq!(status(&old), 200);

    // The certificate moves into place before the key (`finish_renewal`): the renewal is
    // over once the new pair has replaced the old and neither `.new` file is left.
    eventually(
        "the certificate is renewed",
        Duration::from_secs(30),
        || {
            (std::fs::read_to_string(dir.join("cert.pem")).unwrap() != first
                && !dir.join("key.pem.new").exists()
                && !dir.join("cert.pem.new").exists())
            .then_some(())
        },
    );

    // The gateway keeps syncing with its new certificate: a deployment reaches it.
    let key = trust_acme(&ctl, &gw.work);
    let v1 = signed(&gw, "probe-1", &probe("1.0", "sleep 100000", "16MiB"), &key);
    ctl.fleet(&["publish", v1.to_str().unwrap()]);
    ctl.fleet(&["approve", "probe", "1.0"]);
    let d = ctl.json(&[
        "deploy",
        "probe",
        "--gateways",
        &gateway_id(&gw),
        "--soak",
        "1s",
    ]);
    ctl.wait_deployment(d["id"].as_str().unwrap(), "done");

    // The replaced certificate ends with its validity.
    eventually(
        "the old certificate is refused",
        Duration::from_secs(60),
        || (status(&old) == 401).then_some(()),
    );
    let events = ctl.fleet(&["events"]).stdout;
    assert!(events.contains("certificate-renewed"), "{events}");
    // The inventory says when the current certificate expires.
    let id = gateway_id(&gw);
    let inv = ctl.json(&["gateway", &id]);
    let expires = inv["certificate_expires_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(expires > now - 15_000 && expires <= now + 15_000, "{inv}");
    let text = ctl.fleet(&["gateway", &id]).stdout;
    assert!(text.contains("certificate:   expire"), "{text}");
}

#[test]
fn gateways_ride_through_a_controller_outage_and_catch_up() {
    let mut ctl = Controller::start();
    let gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=lyon"), None);
    let key = trust_acme(&ctl, &gw.work);
    let v1 = signed(&gw, "probe-1", &probe("1.0", "sleep 100000", "16MiB"), &key);
    ctl.fleet(&["publish", v1.to_str().unwrap()]);
    ctl.fleet(&["approve", "probe", "1.0"]);
    let d = ctl.json(&[
        "deploy",
        "probe",
        "--selector",
        "region=lyon",
        "--soak",
        "1s",
    ]);
    ctl.wait_deployment(d["id"].as_str().unwrap(), "done");
    let pid = gw.svc("probe").unwrap().pid;

    ctl.stop();
    std::thread::sleep(Duration::from_secs(3));
    // Cut off, the gateway keeps running its last desired state.
    let during = gw.svc("probe").unwrap();
    assert_eq!((during.state.as_str(), during.pid), ("running", pid));

    ctl.spawn();
    let v2 = signed(&gw, "probe-2", &probe("2.0", "sleep 100001", "16MiB"), &key);
    ctl.fleet(&["publish", v2.to_str().unwrap()]);
    ctl.fleet(&["approve", "probe", "2.0"]);
    let d = ctl.json(&[
        "deploy",
        "probe:2.0",
        "--selector",
        "region=lyon",
        "--soak",
        "1s",
    ]);
    ctl.wait_deployment(d["id"].as_str().unwrap(), "done");
    assert_eq!(
        version_on(&gw, "probe"),
        Some(("2.0".into(), "running".into()))
    );
}

#[test]
fn hostile_enrollments_and_callers_get_clear_refusals_and_change_nothing() {
    let ctl = Controller::start();
    let token = ctl.enroll_token("region=lyon");
    let gw = Gateway::start_enrolled(&ctl.url(), &token, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let anonymous = ctl.https(None);
    let csr = {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let enroll = |token: &str, csr: &str| {
        let body = serde_json::json!({ "token": token, "csr": csr, "agent_version": "x" });
        rt.block_on(anonymous.raw("POST", "/v1/enroll", Some(body.to_string().into_bytes())))
            .unwrap()
    };
    // The token was used by the gateway: refused.
    let (status, body) = enroll(&token, &csr);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("unknown, used or expired"));
    // A forged one, of the right shape with the right CA: refused.
    let fingerprint = token.rsplit('.').next().unwrap();
    let forged = format!("shgjoin.{}.{fingerprint}", "ab".repeat(32));
    assert_eq!(enroll(&forged, &csr).0, 401);
    // A fresh token with a broken request: refused, and the token is not spent.
    let fresh = ctl.enroll_token("region=paris");
    assert_eq!(enroll(&fresh, "not a certificate request").0, 400);
    let (status, _) = enroll(&fresh, &csr);
    assert_eq!(status, 201);
    // Malformed and oversized bodies.
    let (status, _) = rt
        .block_on(anonymous.raw("POST", "/v1/enroll", Some(b"{".to_vec())))
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = rt
        .block_on(anonymous.raw("POST", "/v1/enroll", Some(vec![b' '; 8 << 20])))
        .unwrap();
    assert_eq!(status, 413);
    // Without a credential nothing else answers.
    let (status, _) = rt
        .block_on(anonymous.raw("GET", "/v1/gateways", None))
        .unwrap();
    assert_eq!(status, 401);

    // A gateway speaks for itself only: its certificate opens the sync, not the operator's
    // calls.
    let dir = gw.dir.join("fleet");
    let as_gateway = api::Client::with_options(
        &ctl.url(),
        &api::Options {
            ca_cert: Some(dir.join("ca.pem")),
            client_cert: Some((dir.join("cert.pem"), dir.join("key.pem"))),
            ..Default::default()
        },
    )
    .unwrap();
    let (status, _) = rt
        .block_on(as_gateway.raw("GET", "/v1/gateways", None))
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = rt
        .block_on(as_gateway.raw("GET", "/v1/sync/desired", None))
        .unwrap();
    assert_eq!(status, 200);

    // A provider cannot deploy another provider's service (it does not exist for it).
    let rival = ctl
        .fleet(&["token", "create", "--provider", "vodco"])
        .stdout
        .trim()
        .to_string();
    let as_rival = ctl.https(Some(rival));
    let body = serde_json::json!({ "service": "acme/probe", "selector": { "region": "lyon" } });
    let (status, _) = rt
        .block_on(as_rival.raw(
            "POST",
            "/v1/deployments",
            Some(body.to_string().into_bytes()),
        ))
        .unwrap();
    assert!(status == 404 || status == 403, "{status}");

    // Revoked: the gateway's certificate is refused at once.
    let id = gateway_id(&gw);
    ctl.fleet(&["revoke", &id]);
    let (status, _) = rt
        .block_on(as_gateway.raw("GET", "/v1/sync/desired", None))
        .unwrap();
    assert_eq!(status, 401);
    let row = ctl.json(&["gateway", &id]);
    assert_eq!(row["revoked"], true);
    assert_eq!(row["online"], false);
    assert_eq!(ctl.json(&["deployments"]).as_array().unwrap().len(), 0);
}

/// What a caller of the controller should get, by the rules of the realms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Forbidden,
    Hidden,
    Unauthorized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Operator,
    Owner,
    Rival,
    Gateway,
    Anonymous,
}

/// The controller's rules, per operation of its OpenAPI document, written out independently
/// of its code.
fn fleet_rule(op: &str, who: Caller) -> Expect {
    use Caller::*;
    use Expect::*;
    if matches!(op, "openapi" | "enroll") {
        return Allowed;
    }
    if who == Anonymous {
        return Unauthorized;
    }
    match (op, who) {
        // The gateway's own calls: only a gateway's certificate says which gateway it is.
        ("desired" | "report" | "renewCertificate", Gateway) => Allowed,
        ("desired" | "report" | "renewCertificate", _) => Forbidden,
        (_, Operator) => Allowed,
        // The approved catalog and its packages: every realm (a rival's package does not
        // exist for a provider).
        ("catalog", _) => Allowed,
        ("getPackage" | "getManifest" | "getBlob", Owner | Gateway) => Allowed,
        ("getPackage" | "getManifest" | "getBlob", Rival) => Hidden,
        // The registry's base answers anyone with a credential; the catalog's metadata
        // (every provider's listings) is the gateways' and the operator's.
        ("registryBase", _) => Allowed,
        ("catalogMetadata", Gateway) => Allowed,
        // Providers: their own packages, deployments, services and events.
        (
            "publish" | "listDeployments" | "deploy" | "fleetServices" | "events" | "metrics",
            Owner | Rival,
        ) => Allowed,
        ("getDeployment" | "controlDeployment", Owner) => Allowed,
        ("getDeployment" | "controlDeployment", Rival) => Hidden,
        ("listPolicy", Owner | Rival) => Allowed,
        // Everything else is the operator's.
        _ => Forbidden,
    }
}

#[test]
fn every_controller_operation_answers_each_realm_by_the_rules() {
    let ctl = Controller::start();
    let gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=lyon"), None);
    let key = trust_acme(&ctl, &gw.work);
    let pkg = signed(&gw, "probe-1", &probe("1.0", "sleep 100000", "16MiB"), &key);
    ctl.fleet(&["publish", pkg.to_str().unwrap()]);
    ctl.fleet(&["approve", "probe", "1.0"]);
    let deployment = ctl.json(&[
        "deploy",
        "probe",
        "--selector",
        "region=lyon",
        "--waves",
        "1",
        "--soak",
        "1h",
    ]);
    let deployment = deployment["id"].as_str().unwrap().to_string();
    let digest = ctl.json(&["catalog"])[0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    ctl.fleet(&["policy", "set", "--provider", "acme", "--everywhere"]);
    // A second gateway, enrolled by hand, to be looked at and revoked.
    let victim = {
        let token = ctl.enroll_token("region=paris");
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = serde_json::json!({ "token": token, "csr": csr, "agent_version": "x" });
        let (status, reply) = rt
            .block_on(ctl.https(None).raw(
                "POST",
                "/v1/enroll",
                Some(body.to_string().into_bytes()),
            ))
            .unwrap();
        assert_eq!(status, 201);
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        reply["gateway_id"].as_str().unwrap().to_string()
    };
    let token = |provider: &str| {
        ctl.fleet(&["token", "create", "--provider", provider])
            .stdout
            .trim()
            .to_string()
    };
    let dir = gw.dir.join("fleet");
    let mut callers = std::collections::BTreeMap::new();
    callers.insert(
        Caller::Operator,
        api::Client::new(ctl.socket().to_str().unwrap()).unwrap(),
    );
    callers.insert(Caller::Owner, ctl.https(Some(token("acme"))));
    callers.insert(Caller::Rival, ctl.https(Some(token("vodco"))));
    callers.insert(
        Caller::Gateway,
        api::Client::with_options(
            &ctl.url(),
            &api::Options {
                ca_cert: Some(dir.join("ca.pem")),
                client_cert: Some((dir.join("cert.pem"), dir.join("key.pem"))),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    callers.insert(Caller::Anonymous, ctl.https(None));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let doc: Value =
        serde_json::from_str(include_str!("../../../controller/openapi.json")).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            for (&who, client) in &callers {
                // Fresh objects to remove, for each caller.
                let victim_token: Value = serde_json::from_str(
                    &ctl.fleet(&["token", "create", "--provider", "victim", "--json"])
                        .stdout,
                )
                .unwrap();
                let keys = gw.work.join(format!("victim-{checked}"));
                std::fs::create_dir_all(&keys).unwrap();
                let mut gen = Command::new(SHG);
                gen.args(["key", "gen", "victim", "--dir"]).arg(&keys);
                assert!(run_captured(gen, &keys, Duration::from_secs(30)).ok());
                let rule = ctl.json(&[
                    "trust",
                    "add",
                    "--provider",
                    "victim",
                    keys.join("victim.pub").to_str().unwrap(),
                ]);
                let gateway_part = if path.starts_with("/v1/gateways") {
                    victim.clone()
                } else if path.starts_with("/v1/tokens") {
                    victim_token["id"].to_string()
                } else {
                    deployment.clone()
                };
                let uri = path
                    .replace("{id}", &gateway_part)
                    .replace("{key_id}", rule["key_id"].as_str().unwrap())
                    .replace("{provider}", "acme")
                    .replace("{name}", "probe")
                    .replace("{version}", "1.0")
                    .replace("{reference}", "1.0")
                    .replace("{digest}", &digest)
                    .replace("{action}", "pause");
                // The gateway's own syncs and reports share its rate limit with the matrix's
                // calls: a 429 (answered before any rule is looked at) is waited out.
                let (status, reply) = loop {
                    let (status, reply) = rt
                        .block_on(client.raw(&method.to_uppercase(), &uri, None))
                        .unwrap_or_else(|e| panic!("{who:?} {method} {uri}: {e}"));
                    if status != 429 {
                        break (status, reply);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                let want = fleet_rule(id, who);
                let ok = match want {
                    Expect::Allowed => ![401, 403, 404].contains(&status),
                    Expect::Forbidden => status == 403,
                    Expect::Hidden => status == 404,
                    Expect::Unauthorized => status == 401,
                };
                assert!(
                    ok,
                    "{id} ({method} {uri}) as {who:?}: want {want:?}, got {status}: {}",
                    String::from_utf8_lossy(&reply)
                );
                // Put the deployment and the policy back where the matrix expects them.
                if id == "controlDeployment" && status == 200 {
                    ctl.fleet(&["resume", &deployment]);
                }
                if id == "clearPolicy" && status == 204 {
                    ctl.fleet(&["policy", "set", "--provider", "acme", "--everywhere"]);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        34 * 5,
        "every operation of the document was checked"
    );
}

/// schemathesis (from PyPI, `scripts/test-tools.sh`) throws generated requests at every
/// operation of the controller's document as the operator: no answer may be a server error.
#[test]
fn schemathesis_finds_no_server_error_in_the_controller() {
    let schemathesis = "/opt/shg-test/venv/bin/schemathesis";
    let ctl = Controller::start();
    let _gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=lyon"), None);
    let token = ctl
        .fleet(&["token", "create", "--operator"])
        .stdout
        .trim()
        .to_string();
    let out = Command::new(schemathesis)
        .current_dir(ctl.dir.path())
        .args([
            "run",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../controller/openapi.json"),
        ])
        .args(["--url", &ctl.url()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--tls-verify")
        .arg(ctl.ca())
        .args([
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--rate-limit",
            "15/s",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .expect("run schemathesis (scripts/test-tools.sh installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n--- controller log\n{}",
        ctl.log()
    );
    assert!(report.contains("34 selected / 34 total"), "{report}");
}

/// The fleet console in headless Chromium: the operator filters gateways by label, follows a
/// deployment's waves and approves a package; a provider sees only its own.
#[test]
fn the_fleet_console_shows_the_fleet_and_approves() {
    use crate::console::Browser;
    let ctl = Controller::start();
    let gw = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=lyon"), None);
    let _paris = Gateway::start_enrolled(&ctl.url(), &ctl.enroll_token("region=paris"), None);
    let key = trust_acme(&ctl, &gw.work);
    let v1 = signed(&gw, "probe-1", &probe("1.0", "sleep 100000", "16MiB"), &key);
    let v2 = signed(&gw, "probe-2", &probe("2.0", "sleep 100001", "16MiB"), &key);
    ctl.fleet(&["publish", v1.to_str().unwrap()]);
    ctl.fleet(&["publish", v2.to_str().unwrap()]);
    ctl.fleet(&["approve", "probe", "1.0"]);
    let d = ctl.json(&[
        "deploy",
        "probe",
        "--selector",
        "region=lyon",
        "--soak",
        "1s",
    ]);
    let id = d["id"].as_str().unwrap().to_string();
    ctl.wait_deployment(&id, "done");
    let operator = ctl
        .fleet(&["token", "create", "--operator"])
        .stdout
        .trim()
        .to_string();
    let acme = ctl
        .fleet(&["token", "create", "--provider", "acme"])
        .stdout
        .trim()
        .to_string();
    let vodco = ctl
        .fleet(&["token", "create", "--provider", "vodco"])
        .stdout
        .trim()
        .to_string();
    let base = ctl.url();
    let browser = Browser::start();

    browser.login(&base, &operator, "operator");
    browser.wait(
        "both gateways",
        "document.querySelectorAll('#gateways tbody tr').length === 2",
    );
    browser.type_into("#selector", "region=lyon");
    browser.wait(
        "the Lyon gateway alone",
        &format!(
            "document.querySelectorAll('#gateways tbody tr').length === 1 && !!document.querySelector('#gateways tr[data-gateway=\"{}\"]')",
            gateway_id(&gw)
        ),
    );
    browser.wait(
        "the deployment, done, with its gateway healthy",
        &format!(
            "(() => {{ const d = document.querySelector('[data-deployment=\"{id}\"]'); return d && d.textContent.includes('done') && d.querySelector('td.healthy'); }})()"
        ),
    );
    browser.wait(
        "the service across the fleet",
        "(() => { const r = document.querySelector('#services tr[data-service=\"acme/probe\"]'); return r && r.children[3].textContent === '1'; })()",
    );
    browser.screenshot("fleet-operator.png");
    browser.click("#catalog tr[data-package=\"acme/probe/2.0\"] button.approve");
    browser.wait(
        "2.0 approved",
        "document.querySelector('#catalog tr[data-package=\"acme/probe/2.0\"] td.healthy')",
    );
    let catalog = ctl.json(&["catalog"]);
    assert!(catalog
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["version"] == "2.0" && e["approved"] == true));
    // The cookie alone changes nothing.
    assert_eq!(
        browser.fetch_status("POST", &format!("/v1/deployments/{id}/cancel")),
        403
    );
    browser.logout();

    // The provider: its deployment and service, no gateways, no approve button.
    browser.login(&base, &acme, "provider");
    browser.wait(
        "its deployment",
        &format!("!!document.querySelector('[data-deployment=\"{id}\"]')"),
    );
    assert_eq!(
        browser.js("return document.getElementById('gateways-panel').hidden;"),
        true
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('#catalog button.approve').length;"),
        0
    );
    browser.logout();
    // A rival sees nothing of acme's.
    browser.login(&base, &vodco, "provider");
    browser.wait(
        "an empty fleet",
        "document.querySelectorAll('#catalog tbody tr').length === 0 && document.querySelectorAll('.deployment').length === 0",
    );
    browser.screenshot("fleet-rival.png");
}
