//! The lab: an ISP's network on one machine, to try a fleet without a fleet. A WAN router
//! namespace with one subnet (a bridge) per region and the fleet controller on its loopback;
//! per gateway a namespace running a real `shg gateway run` enrolled with that controller,
//! behind an access link shaped both ways with HTB, and a LAN namespace behind it for the
//! household's devices.
//!
//! Everything the lab makes is written to its state file (`lab.json`) *before* it is made,
//! so `down` can always undo it: after a clean `up`, after one that failed half-way, after
//! its processes were killed. The names and addresses come from [`plan`], pure and tested;
//! the steps run `ip`, `tc`, `nft` and `kill` through a [`command::Runner`].

pub mod demo;
pub mod plan;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command::Runner;
use serde::{Deserialize, Serialize};

pub use plan::{Link, Plan};

/// The default directory of labs (tmpfs: a reboot forgets a lab, as it forgets namespaces).
pub const DEFAULT_DIR: &str = "/run/shg-lab";
/// The default lab's name.
pub const DEFAULT_NAME: &str = "lab";

/// What went wrong, in a sentence that names the object, the rule and the way out.
#[derive(Debug)]
pub struct LabError(pub String);

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

impl From<command::CommandError> for LabError {
    fn from(e: command::CommandError) -> LabError {
        LabError(e.to_string())
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> LabError {
    LabError(format!("cannot {what} {}: {e}", path.display()))
}

/// One thing the lab made (or was about to make when it recorded it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Object {
    /// A directory of the lab's (its state, logs, the agents' and controller's state).
    Dir { path: PathBuf },
    /// A named network namespace (`/run/netns/NAME`).
    Netns { name: String },
    /// An interface (veth or bridge) inside one of the lab's namespaces: it goes with it.
    Link { netns: String, name: String },
    /// An nftables table inside one of the lab's namespaces: it goes with it.
    NftTable { netns: String, table: String },
    /// An HTB tree on an interface of the lab's: it goes with the interface.
    Qdisc { netns: String, dev: String },
    /// A process: its role, its PID once started, and an argument only it has (its state
    /// directory), so a PID the kernel gave to someone else since is never signalled.
    Process {
        role: String,
        pid: Option<i32>,
        marker: PathBuf,
    },
    /// A cgroup parent an agent puts its services under.
    Cgroup { name: String },
}

/// The state file: the plan and everything made so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub plan: Plan,
    pub objects: Vec<Object>,
    /// Whether the kernel has netem, so the links have their profile's delay and jitter.
    #[serde(default)]
    pub netem: bool,
}

/// A lab, made or being made.
pub struct Lab {
    pub state: State,
    runner: Arc<dyn Runner>,
    /// The `shg` binary the controller and agents run (this one).
    shg: PathBuf,
}

/// One gateway as `shg lab status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub region: String,
    pub link: String,
    pub wan_address: String,
    pub netns: String,
    pub lan_netns: String,
    /// The agent's PID, when it runs.
    pub pid: Option<i32>,
    /// Its resident memory, KiB.
    pub rss_kib: Option<u64>,
    /// Its id at the controller, once enrolled.
    pub gateway_id: Option<String>,
    /// `online` or `offline` as `shg fleet gateways` has it, `not enrolled`, or `unknown`
    /// when the controller does not answer.
    pub controller: String,
    pub services: Vec<String>,
}

/// The whole lab as `shg lab status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub dir: PathBuf,
    pub link: Link,
    pub down_bits: u64,
    pub up_bits: u64,
    pub controller_url: String,
    pub controller_socket: PathBuf,
    pub controller_pid: Option<i32>,
    pub controller_rss_kib: Option<u64>,
    /// What the lab does not emulate.
    pub note: String,
    pub gateways: Vec<GatewayStatus>,
}

/// Delay and jitter need netem, which this kind of kernel may lack.
pub const NOTE: &str =
    "access links are shaped (HTB) but have no added delay, jitter or loss: netem is not used";

impl Lab {
    /// Loads the lab from its state file under `base`.
    pub fn load(base: &Path, name: &str, shg: PathBuf) -> Result<Lab, LabError> {
        plan::check_name(name).map_err(LabError)?;
        let path = plan::lab_dir(base, name).join("lab.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            LabError(format!(
                "no lab `{name}` here: cannot read {}: {e} (start one with `shg lab up`)",
                path.display()
            ))
        })?;
        let state: State = serde_json::from_str(&text).map_err(|e| {
            LabError(format!(
                "{} is not a lab state file: {e} (remove the lab's namespaces `shglab-{name}-*` by hand)",
                path.display()
            ))
        })?;
        Ok(Lab {
            state,
            runner: Arc::new(command::System),
            shg,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.state.plan
    }

    /// Writes the state file (whole, then renamed over the old one).
    fn save(&self) -> Result<(), LabError> {
        let path = self.state.plan.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.state).expect("the state serializes");
        std::fs::write(&tmp, text).map_err(|e| io_error(&tmp, "write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, "write", e))
    }

    /// Records `object` in the state file before it is made.
    fn record(&mut self, object: Object) -> Result<(), LabError> {
        // For the tests of a half-made lab: `SHG_LAB_FAIL_AT=N` fails the N-th object.
        if let Some(n) = std::env::var("SHG_LAB_FAIL_AT")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            if self.state.objects.len() + 1 >= n {
                return Err(LabError(format!(
                    "stopped before {object:?} as SHG_LAB_FAIL_AT={n} asks (a test's injected failure)"
                )));
            }
        }
        if !self.state.objects.contains(&object) {
            self.state.objects.push(object);
        }
        self.save()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        Ok(self.runner.run(program, args, None)?)
    }

    /// Makes the lab of `plan`. When a step fails, what was made is undone before the error
    /// is returned.
    pub fn up(plan: Plan, shg: PathBuf, runner: Arc<dyn Runner>) -> Result<Lab, LabError> {
        if plan.state_file().exists() {
            return Err(LabError(format!(
                "lab `{}` is already up ({}): `shg lab down --name {}` first, or choose another --name",
                plan.name,
                plan.state_file().display(),
                plan.name
            )));
        }
        if let Some(ns) = plan
            .namespaces()
            .into_iter()
            .find(|ns| Path::new("/run/netns").join(ns).exists())
        {
            return Err(LabError(format!(
                "namespace `{ns}` exists but lab `{}` has no state file: something else made it; remove it (`ip netns del {ns}`) or choose another --name",
                plan.name
            )));
        }
        std::fs::create_dir_all(&plan.dir).map_err(|e| io_error(&plan.dir, "create", e))?;
        let mut lab = Lab {
            state: State {
                objects: vec![Object::Dir {
                    path: plan.dir.clone(),
                }],
                plan,
                netem: false,
            },
            runner,
            shg,
        };
        lab.save()?;
        if let Err(e) = lab.make() {
            let undo = match lab.down() {
                Ok(()) => "everything it made was undone".to_string(),
                Err(u) => format!("undoing it failed too: {u}"),
            };
            return Err(LabError(format!("{e}\n(the lab did not come up; {undo})")));
        }
        Ok(lab)
    }

    fn make(&mut self) -> Result<(), LabError> {
        let plan = self.state.plan.clone();
        let wan = plan.wan_netns.as_str();
        self.add_netns(wan)?;
        // netem, where the kernel has it: tried on the new namespace's loopback.
        self.state.netem = plan.link.delay_us > 0
            && self
                .run(
                    "tc",
                    &[
                        "-n", wan, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                    ],
                )
                .and_then(|_| self.run("tc", &["-n", wan, "qdisc", "del", "dev", "lo", "root"]))
                .is_ok();
        self.save()?;
        let ctl = format!("{}/32", plan::CONTROLLER_ADDR);
        self.run("ip", &["-n", wan, "addr", "add", &ctl, "dev", "lo"])?;
        self.forwarding(wan)?;
        for region in &plan.regions {
            self.record(Object::Link {
                netns: wan.into(),
                name: region.name.clone(),
            })?;
            self.run(
                "ip",
                &["-n", wan, "link", "add", &region.name, "type", "bridge"],
            )?;
            let cidr = format!("{}/16", region.router);
            self.run(
                "ip",
                &["-n", wan, "addr", "add", &cidr, "dev", &region.name],
            )?;
            self.run("ip", &["-n", wan, "link", "set", &region.name, "up"])?;
        }
        for gw in &plan.gateways {
            self.make_gateway_network(&plan, gw)?;
        }

        // The controller, on the router's loopback address (its certificate names it).
        std::fs::create_dir_all(plan.dir.join("logs"))
            .map_err(|e| io_error(&plan.dir, "create logs in", e))?;
        let ctl_dir = plan.controller_dir();
        let listen = format!("{}:{}", plan::CONTROLLER_ADDR, plan::CONTROLLER_PORT);
        let ctl_args: Vec<String> = vec![
            "controller".into(),
            "run".into(),
            "--state-dir".into(),
            ctl_dir.display().to_string(),
            "--listen".into(),
            listen,
        ];
        self.spawn("controller", wan, &ctl_dir, &ctl_args, &[])?;
        let socket = plan.controller_socket();
        wait_until(
            "the lab's controller to answer on its socket",
            Duration::from_secs(30),
            || self.fleet(&["catalog"]).is_ok(),
        )
        .map_err(|e| {
            LabError(format!(
                "{e}; its log: {}",
                self.log_path("controller").display()
            ))
        })?;

        // The gateways: enrolled with one-time tokens carrying their labels.
        for gw in &plan.gateways {
            let token = self.fleet(&[
                "enroll-token",
                "--labels",
                &gw.labels(&plan.link, &plan.name),
            ])?;
            let token = token.trim().to_string();
            std::fs::create_dir_all(&gw.state_dir)
                .map_err(|e| io_error(&gw.state_dir, "create", e))?;
            let config = gateway_toml(&plan.link);
            let path = gw.state_dir.join("gateway.toml");
            std::fs::write(&path, config).map_err(|e| io_error(&path, "write", e))?;
            self.record(Object::Cgroup {
                name: gw.cgroup_parent(),
            })?;
            let args: Vec<String> = vec![
                "gateway".into(),
                "run".into(),
                "--state-dir".into(),
                gw.state_dir.display().to_string(),
                "--controller".into(),
                plan.controller_url(),
            ];
            self.spawn(
                &gw.name,
                &gw.netns,
                &gw.state_dir,
                &args,
                &[("SHG_ENROLL_TOKEN", token.as_str())],
            )?;
        }
        let _ = socket;
        for gw in &plan.gateways {
            let enrolled = gw.state_dir.join("fleet/enrolled.json");
            wait_until(
                &format!("gateway `{}` to answer and enroll", gw.name),
                Duration::from_secs(60),
                || enrolled.exists() && self.shg_at(gw, &["ps"]).is_ok(),
            )
            .map_err(|e| {
                LabError(format!(
                    "{e}; its log: {}",
                    self.log_path(&gw.name).display()
                ))
            })?;
        }
        Ok(())
    }

    fn add_netns(&mut self, name: &str) -> Result<(), LabError> {
        self.record(Object::Netns { name: name.into() })?;
        self.run("ip", &["netns", "add", name])?;
        self.run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn forwarding(&self, netns: &str) -> Result<(), LabError> {
        self.run(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )
        .map(|_| ())
    }

    /// A gateway's namespaces, its WAN link to its region's bridge, its LAN, NAT and shaping.
    fn make_gateway_network(&mut self, plan: &Plan, gw: &plan::Gateway) -> Result<(), LabError> {
        let wan = plan.wan_netns.as_str();
        let (ns, lan) = (gw.netns.as_str(), gw.lan_netns.as_str());
        self.add_netns(ns)?;
        self.add_netns(lan)?;
        // Each veth is made with its ends in their namespaces at once, so the short names
        // never meet the host's interfaces or another lab's.
        self.record(Object::Link {
            netns: ns.into(),
            name: plan::WAN_IF.into(),
        })?;
        self.run(
            "ip",
            &[
                "link",
                "add",
                plan::WAN_IF,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                &gw.name,
                "netns",
                wan,
            ],
        )?;
        self.run(
            "ip",
            &[
                "-n", wan, "link", "set", &gw.name, "master", &gw.region, "up",
            ],
        )?;
        let cidr = format!("{}/16", gw.wan_address);
        self.run("ip", &["-n", ns, "addr", "add", &cidr, "dev", plan::WAN_IF])?;
        self.run("ip", &["-n", ns, "link", "set", plan::WAN_IF, "up"])?;
        let router = gw.router.to_string();
        self.run("ip", &["-n", ns, "route", "add", "default", "via", &router])?;

        self.record(Object::Link {
            netns: ns.into(),
            name: plan::LAN_IF.into(),
        })?;
        self.run(
            "ip",
            &[
                "link",
                "add",
                plan::LAN_IF,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                plan::HOST_IF,
                "netns",
                lan,
            ],
        )?;
        let gw_lan = format!("{}/24", plan::LAN_GATEWAY);
        let host_lan = format!("{}/24", plan::LAN_HOST);
        self.run(
            "ip",
            &["-n", ns, "addr", "add", &gw_lan, "dev", plan::LAN_IF],
        )?;
        self.run("ip", &["-n", ns, "link", "set", plan::LAN_IF, "up"])?;
        self.run(
            "ip",
            &["-n", lan, "addr", "add", &host_lan, "dev", plan::HOST_IF],
        )?;
        self.run("ip", &["-n", lan, "link", "set", plan::HOST_IF, "up"])?;
        let lan_gw = plan::LAN_GATEWAY.to_string();
        self.run(
            "ip",
            &["-n", lan, "route", "add", "default", "via", &lan_gw],
        )?;
        self.forwarding(ns)?;

        // The household's devices go out under the gateway's WAN address, as at home.
        self.record(Object::NftTable {
            netns: ns.into(),
            table: plan::NAT_TABLE.into(),
        })?;
        let rules = format!(
            "table ip {t} {{\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    oifname \"{w}\" masquerade\n  }}\n}}\n",
            t = plan::NAT_TABLE,
            w = plan::WAN_IF
        );
        self.runner
            .run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(&rules))?;

        // Downlink: what the router sends down the line; uplink: what the gateway sends up.
        for (netns, dev, bits) in [
            (wan, gw.name.as_str(), plan.link.down),
            (ns, plan::WAN_IF, plan.link.up),
        ] {
            self.record(Object::Qdisc {
                netns: netns.into(),
                dev: dev.into(),
            })?;
            self.shape(netns, dev, bits)?;
        }
        Ok(())
    }

    /// One HTB class at `bits`/s as the root of `dev`'s egress.
    fn shape(&self, netns: &str, dev: &str, bits: u64) -> Result<(), LabError> {
        let rate = format!("{bits}bit");
        let burst = plan::burst(bits).to_string();
        self.run(
            "tc",
            &[
                "-n", netns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb",
                "default", "1",
            ],
        )?;
        self.run(
            "tc",
            &[
                "-n", netns, "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1",
                "htb", "rate", &rate, "ceil", &rate, "burst", &burst, "cburst", &burst,
            ],
        )?;
        let link = &self.state.plan.link;
        if self.state.netem && link.delay_us > 0 {
            let (delay, jitter) = (
                format!("{}us", link.delay_us),
                format!("{}us", link.jitter_us),
            );
            self.run(
                "tc",
                &[
                    "-n", netns, "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:",
                    "netem", "delay", &delay, &jitter,
                ],
            )?;
        }
        Ok(())
    }

    fn log_path(&self, role: &str) -> PathBuf {
        self.state.plan.dir.join("logs").join(format!("{role}.log"))
    }

    /// Starts `shg ARGS…` in namespace `netns` in the background, recorded first.
    fn spawn(
        &mut self,
        role: &str,
        netns: &str,
        marker: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<i32, LabError> {
        self.record(Object::Process {
            role: role.into(),
            pid: None,
            marker: marker.to_path_buf(),
        })?;
        let log_path = self.log_path(role);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, "open", e))?;
        let err = log
            .try_clone()
            .map_err(|e| io_error(&log_path, "open", e))?;
        // nsenter execs in place: the child's PID is the agent's. A process group of its own,
        // so a ^C at the terminal that ran `shg lab up` does not reach it.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg(&self.shg)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("SHG_GATEWAY")
            .env_remove("SHG_CONTROLLER")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| {
            LabError(format!(
                "cannot start the lab's {role} (nsenter {}): {e} (is util-linux installed?)",
                self.shg.display()
            ))
        })?;
        let pid = child.id() as i32;
        // Never waited for here: `up` returns and the process is reparented, as a daemon is.
        std::mem::forget(child);
        for o in &mut self.state.objects {
            if let Object::Process {
                role: r,
                pid: p @ None,
                ..
            } = o
            {
                if r == role {
                    *p = Some(pid);
                }
            }
        }
        self.save()?;
        Ok(pid)
    }

    /// `shg fleet ARGS…` against the lab's controller, as the operator on its socket.
    pub fn fleet(&self, args: &[&str]) -> Result<String, LabError> {
        let socket = self.state.plan.controller_socket();
        let mut all = vec!["fleet", "--controller", socket.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        self.shg_cmd(&all, &[])
    }

    /// `shg ARGS…` against the gateway named `name` (`gw1`), on its socket, as the operator
    /// or as the holder of `token`.
    pub fn shg_on(
        &self,
        name: &str,
        args: &[&str],
        token: Option<&str>,
    ) -> Result<String, LabError> {
        let gw = self.gateway(name)?;
        let socket = gw.socket();
        let mut env = vec![("SHG_GATEWAY", socket.to_str().unwrap_or_default())];
        if let Some(token) = token {
            env.push(("SHG_TOKEN", token));
        }
        self.shg_cmd(args, &env)
    }

    /// `shg ARGS…` with no gateway or controller in particular (`pack`, `sign`, `key gen`).
    pub fn shg(&self, args: &[&str]) -> Result<String, LabError> {
        self.shg_cmd(args, &[])
    }

    fn gateway(&self, name: &str) -> Result<&plan::Gateway, LabError> {
        let plan = &self.state.plan;
        plan.gateway(name).ok_or_else(|| {
            LabError(format!(
                "lab `{}` has no gateway `{name}`: it has gw1 to gw{} (`shg lab status`)",
                plan.name,
                plan.gateways.len()
            ))
        })
    }

    /// The fleet's id of the gateway named `name`, once it enrolled.
    pub fn gateway_id(&self, name: &str) -> Result<String, LabError> {
        let gw = self.gateway(name)?;
        let file = gw.state_dir.join("fleet/enrolled.json");
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["gateway_id"].as_str().map(String::from))
            .ok_or_else(|| {
                LabError(format!(
                    "{name} has not enrolled yet ({} is missing)",
                    file.display()
                ))
            })
    }

    /// Cuts the gateway's access link (its far end, in the ISP's router, goes down) or
    /// brings it back; the gateway and its services keep running.
    pub fn link(&self, name: &str, up: bool) -> Result<(), LabError> {
        let gw = self.gateway(name)?.clone();
        let wan = self.state.plan.wan_netns.clone();
        let state = if up { "up" } else { "down" };
        self.run("ip", &["-n", &wan, "link", "set", &gw.name, state])?;
        Ok(())
    }

    /// `shg ARGS…` against gateway `gw`'s agent, on its socket.
    fn shg_at(&self, gw: &plan::Gateway, args: &[&str]) -> Result<String, LabError> {
        let socket = gw.socket();
        self.shg_cmd(
            args,
            &[("SHG_GATEWAY", socket.to_str().unwrap_or_default())],
        )
    }

    fn shg_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String, LabError> {
        let out = Command::new(&self.shg)
            .args(args)
            .env_remove("SHG_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError(format!("cannot run {}: {e}", self.shg.display())))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LabError(format!(
                "`shg {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The live PID of the process recorded with `marker`.
    fn pid_of(&self, marker: &Path) -> Option<i32> {
        pids_with_marker(marker).into_iter().next()
    }

    /// Each gateway as the agent, `/proc` and the controller see it.
    pub fn status(&self) -> Status {
        let plan = &self.state.plan;
        let rows: Option<Vec<serde_json::Value>> = self
            .fleet(&["gateways", "--json"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let gateways = plan
            .gateways
            .iter()
            .map(|gw| {
                let pid = self.pid_of(&gw.state_dir);
                let gateway_id = std::fs::read_to_string(gw.state_dir.join("fleet/enrolled.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["gateway_id"].as_str().map(String::from));
                let controller = match (&gateway_id, &rows) {
                    (None, _) => "not enrolled".to_string(),
                    (Some(_), None) => "unknown".to_string(),
                    (Some(id), Some(rows)) => rows
                        .iter()
                        .find(|r| r["id"].as_str() == Some(id))
                        .map(|r| {
                            if r["online"].as_bool() == Some(true) {
                                "online"
                            } else {
                                "offline"
                            }
                        })
                        .unwrap_or("not enrolled")
                        .to_string(),
                };
                let services = pid
                    .and_then(|_| self.shg_at(gw, &["ps", "--json"]).ok())
                    .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
                    .map(|list| {
                        list.iter()
                            .filter_map(|s| s["name"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                GatewayStatus {
                    name: gw.name.clone(),
                    region: gw.region.clone(),
                    link: plan.link.name.clone(),
                    wan_address: gw.wan_address.to_string(),
                    netns: gw.netns.clone(),
                    lan_netns: gw.lan_netns.clone(),
                    pid,
                    rss_kib: pid.and_then(rss_kib),
                    gateway_id,
                    controller,
                    services,
                }
            })
            .collect();
        let controller_pid = self.pid_of(&plan.controller_dir());
        Status {
            name: plan.name.clone(),
            dir: plan.dir.clone(),
            link: plan.link.clone(),
            down_bits: plan.link.down,
            up_bits: plan.link.up,
            controller_url: plan.controller_url(),
            controller_socket: plan.controller_socket(),
            controller_pid,
            controller_rss_kib: controller_pid.and_then(rss_kib),
            note: self.note(),
            gateways,
        }
    }

    /// What the links emulate, and what they leave out.
    pub fn note(&self) -> String {
        let link = &self.state.plan.link;
        if self.state.netem && link.delay_us > 0 {
            format!(
                "access links are shaped (HTB) with a netem delay of {:.1} ms ± {:.1} ms each way; no loss is added",
                link.delay_us as f64 / 1000.0,
                link.jitter_us as f64 / 1000.0
            )
        } else if link.delay_us > 0 {
            NOTE.to_string()
        } else {
            "access links are shaped (HTB); a DOWN/UP link has no delay, jitter or loss".to_string()
        }
    }

    /// The command that runs `argv` in `target` (`GATEWAY` or `GATEWAY/lan`), with
    /// `SHG_GATEWAY` and `SHG_CONTROLLER` naming that gateway and the lab's controller.
    pub fn exec_command(&self, target: &str, argv: &[String]) -> Result<Command, LabError> {
        let plan = &self.state.plan;
        let (name, lan) = match target.split_once('/') {
            Some((name, "lan")) => (name, true),
            Some(_) => {
                return Err(LabError(format!(
                "`{target}` is not a place in the lab: use GATEWAY (gw1) or GATEWAY/lan (gw1/lan)"
            )))
            }
            None => (target, false),
        };
        let gw = self.gateway(name)?;
        let (program, rest) = argv.split_first().ok_or_else(|| {
            LabError("no command given: `shg lab exec GATEWAY -- COMMAND [ARGS…]`".into())
        })?;
        let netns = if lan { &gw.lan_netns } else { &gw.netns };
        // `shg` there is this lab's own binary, whether or not one is on PATH.
        let program = if program == "shg" {
            self.shg.display().to_string()
        } else {
            program.clone()
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(program)
            .args(rest)
            .env("SHG_GATEWAY", gw.socket())
            .env("SHG_CONTROLLER", plan.controller_socket())
            .env("SHG_LAB", &plan.name);
        Ok(cmd)
    }

    /// Undoes everything the state file lists, then deletes the state file: services removed
    /// through each agent, agents and the controller stopped, cgroups, mounts, namespaces
    /// (with their interfaces, tables and queues) and files removed. Safe to run again.
    pub fn down(&mut self) -> Result<(), LabError> {
        let plan = self.state.plan.clone();
        let mut problems: Vec<String> = Vec::new();

        // 1. Services go through their agent, which knows how to undo them; a killed agent
        //    with services left is started again for that.
        for gw in &plan.gateways {
            if let Err(e) = self.remove_services(gw) {
                problems.push(e.0);
            }
        }

        // 2. The agents, then the controller: SIGTERM, then SIGKILL past 15 s.
        let mut markers: Vec<PathBuf> = plan.gateways.iter().map(|g| g.state_dir.clone()).collect();
        markers.push(plan.controller_dir());
        for o in &self.state.objects {
            if let Object::Process { marker, .. } = o {
                if !markers.contains(marker) {
                    markers.push(marker.clone());
                }
            }
        }
        let pids: Vec<i32> = markers.iter().flat_map(|m| pids_with_marker(m)).collect();
        self.stop(&pids);

        // 3. Whatever else still runs in the lab's namespaces (a server started through
        //    `shg lab exec`, say) is the lab's too.
        let namespaces: Vec<String> = self
            .state
            .objects
            .iter()
            .filter_map(|o| match o {
                Object::Netns { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let mut stragglers = Vec::new();
        for ns in &namespaces {
            if let Ok(text) = self.run("ip", &["netns", "pids", ns]) {
                stragglers.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        self.stop(&stragglers);

        // 4. The agents' cgroup parents, should a service have outlived its agent.
        for o in &self.state.objects {
            if let Object::Cgroup { name } = o {
                remove_cgroup(name, &mut problems);
            }
        }

        // 5. Mounts below the lab's directory (service roots, data volumes).
        for m in mounts_below(&plan.dir) {
            if let Err(e) = self.run("umount", &["-l", &m.display().to_string()]) {
                problems.push(e.0);
            }
        }

        // 6. The namespaces, gateways' first; their interfaces, tables and queues go too.
        for ns in namespaces.iter().rev() {
            if Path::new("/run/netns").join(ns).exists() {
                if let Err(e) = self.run("ip", &["netns", "del", ns]) {
                    problems.push(e.0);
                }
            }
        }

        // 7. The files, the state file last of all (with the directory it is in).
        if problems.is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&plan.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("cannot remove {}: {e}", plan.dir.display()));
                }
            }
            if let Some(base) = plan.dir.parent() {
                // Only when no other lab lives there.
                let _ = std::fs::remove_dir(base);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError(format!(
                "lab `{}` is not all gone: {}; its state file {} is kept so `shg lab down` can try again",
                plan.name,
                problems.join("; "),
                plan.state_file().display()
            )))
        }
    }

    /// Removes `gw`'s services through its agent, starting the agent again if it was killed
    /// with services left.
    fn remove_services(&mut self, gw: &plan::Gateway) -> Result<(), LabError> {
        let has_services = std::fs::read_dir(gw.state_dir.join("services"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let alive = self.pid_of(&gw.state_dir).is_some();
        if !alive && !has_services {
            return Ok(());
        }
        if !alive {
            if !Path::new("/run/netns").join(&gw.netns).exists() {
                return Err(LabError(format!(
                    "gateway `{}` has services but its namespace is gone: remove its cgroup {} by hand",
                    gw.name,
                    gw.cgroup_parent()
                )));
            }
            let args: Vec<String> = vec![
                "gateway".into(),
                "run".into(),
                "--state-dir".into(),
                gw.state_dir.display().to_string(),
            ];
            self.spawn(&gw.name, &gw.netns.clone(), &gw.state_dir, &args, &[])?;
        }
        wait_until(
            &format!("gateway `{}` to answer", gw.name),
            Duration::from_secs(30),
            || self.shg_at(gw, &["ps"]).is_ok(),
        )?;
        let list = self.shg_at(gw, &["ps", "--json"])?;
        let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect();
        for name in names {
            self.shg_at(gw, &["remove", &name]).map_err(|e| {
                LabError(format!(
                    "cannot remove `{name}` from gateway `{}`: {e}",
                    gw.name
                ))
            })?;
        }
        Ok(())
    }

    /// SIGTERM to each of `pids`, SIGKILL to those still there after 15 s.
    fn stop(&self, pids: &[i32]) {
        for pid in pids {
            let _ = self.run("kill", &["-TERM", &pid.to_string()]);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids.iter().filter(|p| alive(**p)) {
            let _ = self.run("kill", &["-KILL", &pid.to_string()]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `gateway.toml` of a lab gateway: networking on the namespace's `wan0` and `lan0`, the
/// link's rates as the bandwidth capacity, the router as resolver.
pub fn gateway_toml(link: &Link) -> String {
    format!(
        "# Made by `shg lab up`.\n[capacity]\nbandwidth_down = \"{}bit\"\nbandwidth_up = \"{}bit\"\n\n\
         [network]\nenabled = true\nwan = \"{}\"\nlan = \"{}\"\nsubnet = \"10.77.0.0/24\"\ndns = [\"{}\"]\n",
        link.down,
        link.up,
        plan::WAN_IF,
        plan::LAN_IF,
        plan::CONTROLLER_ADDR
    )
}

/// Polls `check` every 100 ms for up to `timeout`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            return Err(LabError(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Live processes running `shg` with `marker` as the value of `--state-dir`.
pub fn pids_with_marker(marker: &Path) -> Vec<i32> {
    let marker = marker.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let matches = args
            .windows(2)
            .any(|w| w[0] == b"--state-dir" && w[1] == marker);
        if matches && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Removes cgroup `name` in every hierarchy, killing what still runs there.
fn remove_cgroup(name: &str, problems: &mut Vec<String>) {
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join(name)];
    for h in std::fs::read_dir(root).into_iter().flatten().flatten() {
        candidates.push(h.path().join(name));
    }
    for dir in candidates.into_iter().filter(|d| d.is_dir()) {
        remove_cgroup_tree(&dir, problems);
    }
}

fn remove_cgroup_tree(dir: &Path, problems: &mut Vec<String>) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.path().is_dir() {
            remove_cgroup_tree(&child.path(), problems);
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    problems.push(format!("cannot remove cgroup {}", dir.display()));
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_config_names_the_namespace_interfaces_and_the_link() {
        let toml = gateway_toml(&plan::parse_link("adsl").unwrap());
        assert!(toml.contains("bandwidth_down = \"8000000bit\""), "{toml}");
        assert!(toml.contains("wan = \"wan0\""));
        assert!(toml.contains("lan = \"lan0\""));
        assert!(toml.contains("dns = [\"100.64.0.1\"]"));
    }

    #[test]
    fn the_state_file_names_each_kind_of_object() {
        let o = Object::Process {
            role: "gw1".into(),
            pid: Some(7),
            marker: "/run/shg-lab/t/gw1".into(),
        };
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains("\"kind\":\"process\""), "{text}");
        assert_eq!(serde_json::from_str::<Object>(&text).unwrap(), o);
    }

    #[test]
    fn with_netem_a_link_gets_its_profiles_delay_under_the_rate_and_says_so() {
        let recorder = Arc::new(command::Recorder::new());
        let plan = plan::plan(
            "t",
            Path::new("/run/shg-lab"),
            1,
            1,
            plan::parse_link("adsl").unwrap(),
        )
        .unwrap();
        let mut lab = Lab {
            state: State {
                plan,
                objects: Vec::new(),
                netem: false,
            },
            runner: recorder.clone(),
            shg: PathBuf::from("/bin/false"),
        };
        lab.shape("ns", "wan0", 1_000_000).unwrap();
        assert!(!recorder.lines().iter().any(|l| l.contains("netem")));
        assert!(lab.note().contains("netem is not used"), "{}", lab.note());

        lab.state.netem = true;
        lab.shape("ns", "wan0", 1_000_000).unwrap();
        let lines = recorder.lines();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("parent 1:1 handle 10: netem delay 15000us 3000us")),
            "{lines:#?}"
        );
        assert!(lab.note().contains("15.0 ms ± 3.0 ms"), "{}", lab.note());
    }

    #[test]
    fn a_marker_is_matched_only_as_the_state_dir() {
        assert!(pids_with_marker(Path::new("/nonexistent/shg-lab-marker")).is_empty());
    }
}
