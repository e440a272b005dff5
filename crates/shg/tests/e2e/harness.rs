//! A real gateway agent per test: its own state directory, API socket and cgroup parent, driven
//! through the `shg` binary exactly as a user drives it, and torn down so nothing of it runs on.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// The binary under test.
pub const SHG: &str = env!("CARGO_BIN_EXE_shg");

/// How long a CLI call may take unless the caller says otherwise.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// One service as `shg ps --json` shows it: the fields a user reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Svc {
    pub name: String,
    pub provider: String,
    pub version: String,
    pub state: String,
    pub health: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub priority: i32,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

/// What one CLI call printed and how it ended.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A gateway agent on a private state directory.
pub struct Gateway {
    /// The state directory (short: the API socket path must fit in 108 bytes).
    pub dir: PathBuf,
    /// Package sources and other scratch files of the test.
    pub work: PathBuf,
    agent: Option<Child>,
    /// Cgroup parents seen in this agent's bundles, cleaned up at the end.
    cgroup_parents: Vec<String>,
    /// A token per provider, made on first need: a provider reads its services' logs and
    /// runs commands in them; the operator (the socket without a token) may not.
    provider_tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Providers whose test signing key this gateway trusts already.
    trusted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Where the agent serves HTTPS too, when started with [`Gateway::start_listening`].
    pub listen: Option<std::net::SocketAddr>,
    /// The named network namespace (`/run/netns/NAME`) the agent runs in, restarts included.
    netns: Option<String>,
    /// More arguments of `shg gateway run` (a fleet controller to sync with, say).
    run_args: Vec<String>,
    _dir: tempfile::TempDir,
    _work: tempfile::TempDir,
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `cmd` with its output captured in files (no pipe can fill up), killing it after
/// `timeout`.
pub fn run_captured(cmd: Command, scratch: &Path, timeout: Duration) -> Out {
    try_run(cmd, scratch, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_captured`] without panicking (for the clean-up, which may run during a panic).
pub fn try_run(mut cmd: Command, scratch: &Path, timeout: Duration) -> Result<Out, String> {
    let id = unique();
    let (out_path, err_path) = (
        scratch.join(format!("out-{id}")),
        scratch.join(format!("err-{id}")),
    );
    let create = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    cmd.stdin(Stdio::null())
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?);
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "{what} did not finish within {timeout:?}\n--- stdout\n{}--- stderr\n{}",
            fs::read_to_string(&out_path).unwrap_or_default(),
            fs::read_to_string(&err_path).unwrap_or_default()
        ));
    };
    let read = |p: &Path| {
        let text = String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let _ = fs::remove_file(p);
        text
    };
    Ok(Out {
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// Waits for `child` to exit, up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to one process we started (directly or through the gateway), by PID.
pub fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CLI process left running in the background (`logs -f`, an install to cut short); killed
/// when dropped, so none outlives a test that fails early.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `provider = "..."` of a manifest's text, if it names a valid one.
pub fn provider_of(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("provider")?
            .trim()
            .strip_prefix('=')?;
        let name = value.trim().strip_prefix('"')?.strip_suffix('"')?;
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then(|| name.to_string())
    })
}

/// A TOML array of strings (JSON string syntax is valid TOML).
pub fn toml_list(items: &[&str]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

/// A file added to a package's rootfs: path inside the root, contents, mode.
pub type Extra<'a> = (&'a str, &'a [u8], u32);

impl Gateway {
    /// Starts an agent on a fresh state directory and waits until it answers.
    pub fn start() -> Gateway {
        Gateway::start_with_config(None)
    }

    /// Like [`Gateway::start`], serving the API over HTTPS on a free loopback port too.
    pub fn start_listening() -> Gateway {
        Gateway::start_full(None, true, None)
    }

    /// Like [`Gateway::start`], with `STATE/gateway.toml` written first.
    pub fn start_with_config(config: Option<&str>) -> Gateway {
        Gateway::start_full(config, false, None)
    }

    /// Like [`Gateway::start_with_config`], with the agent (and so its runtime helper and its
    /// services) in the network namespace `/run/netns/NETNS`; the CLI still reaches it over
    /// the socket from here.
    pub fn start_in_netns(netns: &str, config: &str) -> Gateway {
        Gateway::start_full(Some(config), false, Some(netns))
    }

    /// Like [`Gateway::start_with_config`], enrolled with (and syncing with) the fleet
    /// controller at `controller` (https://…) using the one-time `token`.
    pub fn start_enrolled(controller: &str, token: &str, config: Option<&str>) -> Gateway {
        Gateway::start_args(
            config,
            false,
            None,
            vec![
                "--controller".into(),
                controller.into(),
                "--enroll-token".into(),
                token.into(),
            ],
        )
    }

    fn start_full(config: Option<&str>, listen: bool, netns: Option<&str>) -> Gateway {
        Gateway::start_args(config, listen, netns, Vec::new())
    }

    fn start_args(
        config: Option<&str>,
        listen: bool,
        netns: Option<&str>,
        run_args: Vec<String>,
    ) -> Gateway {
        assert!(
            fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
            "the end-to-end tests start real containers and must run as root"
        );
        let dir_guard = tempfile::Builder::new()
            .prefix("shg-e2e-")
            .tempdir_in("/tmp")
            .expect("create the state directory");
        let work_guard = tempfile::Builder::new()
            .prefix("shg-e2e-work-")
            .tempdir_in("/tmp")
            .expect("create the work directory");
        let mut gw = Gateway {
            dir: dir_guard.path().to_path_buf(),
            work: work_guard.path().to_path_buf(),
            agent: None,
            cgroup_parents: Vec::new(),
            provider_tokens: Default::default(),
            trusted: Default::default(),
            listen: None,
            netns: netns.map(String::from),
            run_args,
            _dir: dir_guard,
            _work: work_guard,
        };
        // Agents here share the host's network namespace: they keep off it (no bridge, no
        // forwarding, no rules) unless a test asks for a network (tests/e2e/network.rs runs
        // its agents in namespaces of their own).
        let mut config = config.unwrap_or_default().to_string();
        if !config.contains("[network]") {
            config.push_str("\n[network]\nenabled = false\n");
        }
        fs::write(gw.dir.join("gateway.toml"), config).expect("write gateway.toml");
        if listen {
            gw.listen = Some(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                testdata::free_port(),
            )));
        }
        gw.spawn_agent();
        gw
    }

    /// `https://127.0.0.1:PORT` of an agent started with [`Gateway::start_listening`].
    pub fn https_url(&self) -> String {
        format!("https://{}", self.listen.expect("started listening"))
    }

    /// The agent's self-made certificate, to trust over HTTPS.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("tls/cert.pem")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The agent's own output, for failure messages.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }

    /// PID of the running agent.
    pub fn agent_pid(&self) -> i32 {
        self.agent.as_ref().expect("the agent runs").id() as i32
    }

    fn spawn_agent(&mut self) {
        if let Err(e) = self.try_spawn_agent() {
            panic!("{e}");
        }
    }

    fn try_spawn_agent(&mut self) -> Result<(), String> {
        if self.agent.is_some() {
            return Err("an agent already runs".into());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("agent.log"))
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(|e| format!("cannot open the agent log: {e}"))?;
        let mut cmd = match &self.netns {
            Some(netns) => {
                // nsenter execs the agent in place: the child's PID is the agent's.
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{netns}")).arg(SHG);
                cmd
            }
            None => Command::new(SHG),
        };
        cmd.args(["gateway", "run", "--state-dir"]).arg(&self.dir);
        if let Some(addr) = self.listen {
            cmd.arg("--listen").arg(addr.to_string());
        }
        cmd.args(&self.run_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .spawn()
            .map_err(|e| format!("cannot spawn shg gateway run: {e}"))?;
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.agent.as_mut().map_or(Ok(None), |a| a.try_wait()) {
                self.agent = None;
                return Err(format!(
                    "the agent exited ({status}) before answering:\n{}",
                    self.agent_log()
                ));
            }
            if self.socket().exists() && self.try_shg(&["ps"], CLI_TIMEOUT).is_ok_and(|o| o.ok()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agent did not answer `shg ps` within 20s:\n{}",
                    self.agent_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `shg ARGS…` against this agent.
    pub fn shg(&self, args: &[&str]) -> Out {
        self.shg_timeout(args, CLI_TIMEOUT)
    }

    pub fn shg_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        self.try_shg(args, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `shg ARGS…` against this agent without waiting for it.
    pub fn spawn_shg(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Background {
        let mut cmd = Command::new(SHG);
        cmd.args(args).env("SHG_GATEWAY", self.socket());
        if let Some(token) = self.token_for(args) {
            cmd.env("SHG_TOKEN", token);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn shg {}: {e}", args.join(" ")));
        Background(child)
    }

    /// Starts `shg ARGS…` with `token` in SHG_TOKEN, its stdout going to a file (returned).
    pub fn spawn_shg_as(&self, args: &[&str], token: &str) -> (Background, PathBuf) {
        let path = self.work.join(format!("stdout-{}", unique()));
        let file = fs::File::create(&path).expect("stdout file");
        let child = Command::new(SHG)
            .args(args)
            .env("SHG_GATEWAY", self.socket())
            .env("SHG_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn shg {}: {e}", args.join(" ")));
        (Background(child), path)
    }

    fn try_shg(&self, args: &[&str], timeout: Duration) -> Result<Out, String> {
        let mut cmd = Command::new(SHG);
        cmd.args(args).env("SHG_GATEWAY", self.socket());
        if let Some(token) = self.token_for(args) {
            cmd.env("SHG_TOKEN", token);
        }
        try_run(cmd, &self.work, timeout)
    }

    /// `shg logs NAME …`, `shg exec NAME …` and `shg metrics NAME` read a provider's data:
    /// they run with the token of NAME's provider, as that provider would. Everything else runs as the operator.
    fn token_for(&self, args: &[&str]) -> Option<String> {
        let (command, name) = (args.first()?, args.get(1)?);
        if !matches!(*command, "logs" | "exec" | "metrics") {
            return None;
        }
        let provider = self
            .try_ps()
            .ok()?
            .into_iter()
            .find(|s| s.name == *name)?
            .provider;
        Some(self.provider_token(&provider))
    }

    /// The token of `provider`, made with `shg token create` the first time.
    pub fn provider_token(&self, provider: &str) -> String {
        let mut tokens = self.provider_tokens.lock().unwrap();
        if let Some(token) = tokens.get(provider) {
            return token.clone();
        }
        let out = self.shg_ok(&["token", "create", "--provider", provider]);
        let token = out.stdout.trim().to_string();
        assert!(token.starts_with("shg_"), "{out}");
        tokens.insert(provider.to_string(), token.clone());
        token
    }

    fn try_ps(&self) -> Result<Vec<Svc>, String> {
        let out = self.try_shg(&["ps", "--json"], CLI_TIMEOUT)?;
        if !out.ok() {
            return Err(format!("`shg ps --json` failed: {out}"));
        }
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("`shg ps --json` is not a service list: {e}\n{out}"))
    }

    /// Runs `shg ARGS…` and insists it succeeds.
    pub fn shg_ok(&self, args: &[&str]) -> Out {
        let out = self.shg(args);
        assert!(
            out.ok(),
            "`shg {}` failed:\n{out}\n--- agent log\n{}",
            args.join(" "),
            self.agent_log()
        );
        out
    }

    /// `shg ps --json`.
    pub fn ps(&self) -> Vec<Svc> {
        self.try_ps()
            .unwrap_or_else(|e| panic!("{e}\n--- agent log\n{}", self.agent_log()))
    }

    /// The service named `name` in `shg ps --json`, if listed.
    pub fn svc(&self, name: &str) -> Option<Svc> {
        self.ps().into_iter().find(|s| s.name == name)
    }

    /// `shg inspect NAME --json`.
    pub fn inspect(&self, name: &str) -> Value {
        let out = self.shg_ok(&["inspect", name, "--json"]);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`shg inspect --json` is not JSON: {e}\n{out}"))
    }

    /// `shg events --service NAME --json`: (kind, message) pairs, oldest first.
    pub fn events(&self, name: &str) -> Vec<(String, String)> {
        let out = self.shg_ok(&["events", "--service", name, "--json"]);
        let events: Vec<Value> = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`shg events --json` is not a list: {e}\n{out}"));
        events
            .iter()
            .map(|e| {
                let field = |k: &str| {
                    e[k].as_str()
                        .unwrap_or_else(|| panic!("event without `{k}`: {e}"))
                        .to_string()
                };
                (field("kind"), field("message"))
            })
            .collect()
    }

    /// Polls `shg ps` until `name` satisfies `pred`; panics with what it last saw.
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Svc) -> bool,
    ) -> Svc {
        let deadline = Instant::now() + timeout;
        loop {
            let svc = self.svc(name);
            if let Some(s) = svc.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{name}` did not become {what} within {timeout:?}; last seen: {svc:#?}\nevents: {:#?}\n--- agent log\n{}",
                    svc.as_ref().map(|_| self.events(name)),
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `name` runs and returns it.
    pub fn wait_running(&self, name: &str) -> Svc {
        self.wait_for(name, "running", Duration::from_secs(20), |s| {
            s.state == "running" && s.pid.is_some()
        })
    }

    /// The test signing key of `provider` (made with `shg key gen` on first use), trusted on
    /// this gateway for any of its services.
    pub fn trusted_key(&self, provider: &str) -> PathBuf {
        let keys = self.work.join("keys");
        let key = keys.join(format!("{provider}.key"));
        if !key.exists() {
            fs::create_dir_all(&keys).unwrap();
            let mut cmd = Command::new(SHG);
            cmd.args(["key", "gen", provider, "--dir"]).arg(&keys);
            let out = run_captured(cmd, &self.work, CLI_TIMEOUT);
            assert!(out.ok(), "shg key gen {provider} failed:\n{out}");
        }
        if self.trusted.lock().unwrap().insert(provider.to_string()) {
            let public = keys.join(format!("{provider}.pub"));
            self.shg_ok(&[
                "trust",
                "add",
                "--provider",
                provider,
                public.to_str().unwrap(),
            ]);
        }
        key
    }

    /// Signs a package file with the trusted test key of `provider`.
    pub fn sign(&self, tar: &Path, provider: &str) {
        let key = self.trusted_key(provider);
        let mut cmd = Command::new(SHG);
        cmd.arg("sign").arg(tar).arg("--key").arg(&key);
        let out = run_captured(cmd, &self.work, CLI_TIMEOUT);
        assert!(out.ok(), "shg sign {} failed:\n{out}", tar.display());
    }

    /// Builds a package: `shg-service.toml` + a busybox rootfs with `extra` files, packed with
    /// `shg pack` and signed with the provider's trusted test key. Returns the package file.
    pub fn package(&self, dir_name: &str, manifest: &str, extra: &[Extra<'_>]) -> PathBuf {
        let tar = self.package_unsigned(dir_name, manifest, extra);
        if let Some(provider) = provider_of(manifest) {
            self.sign(&tar, &provider);
        }
        tar
    }

    /// [`Gateway::package`] without a signature.
    pub fn package_unsigned(&self, dir_name: &str, manifest: &str, extra: &[Extra<'_>]) -> PathBuf {
        let dir = self.package_dir(dir_name, manifest, extra);
        let tar = self.work.join(format!("{dir_name}.tar"));
        let mut cmd = Command::new(SHG);
        cmd.arg("pack").arg(&dir).arg("-o").arg(&tar);
        let out = run_captured(cmd, &self.work, CLI_TIMEOUT);
        assert!(out.ok(), "shg pack {} failed:\n{out}", dir.display());
        tar
    }

    /// The package source directory `package` packs.
    pub fn package_dir(&self, dir_name: &str, manifest: &str, extra: &[Extra<'_>]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.work.join(dir_name);
        let rootfs = dir.join("rootfs");
        let busybox = samples::find_busybox().expect("the tests need busybox-static");
        samples::busybox_rootfs(&rootfs, &busybox).expect("lay out the busybox rootfs");
        for (path, contents, mode) in extra {
            let path = rootfs.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        fs::write(dir.join("shg-service.toml"), manifest).unwrap();
        dir
    }

    /// Packs and installs (and starts) a service; returns it as `ps` shows it right after.
    pub fn install(&self, name: &str, manifest: &str, extra: &[Extra<'_>]) -> Svc {
        let tar = self.package(name, manifest, extra);
        self.shg_ok(&["install", tar.to_str().unwrap()]);
        self.svc(name)
            .unwrap_or_else(|| panic!("`{name}` is not listed after its install"))
    }

    /// Host directory of a service inside the state directory.
    pub fn service_dir(&self, name: &str) -> PathBuf {
        self.dir.join("services").join(name)
    }

    /// The service's `linux.cgroupsPath` from its generated bundle (e.g. `/shg-1234abcd/web`).
    pub fn cgroups_path(&mut self, name: &str) -> String {
        self.try_cgroups_path(name)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_cgroups_path(&mut self, name: &str) -> Result<String, String> {
        let path = self.service_dir(name).join("bundle/config.json");
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let cgroups = config["linux"]["cgroupsPath"]
            .as_str()
            .ok_or_else(|| format!("{}: no linux.cgroupsPath", path.display()))?
            .to_string();
        let parent = cgroups
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if !parent.is_empty() && !self.cgroup_parents.contains(&parent) {
            self.cgroup_parents.push(parent);
        }
        Ok(cgroups)
    }

    /// The service's directory in the pids hierarchy.
    pub fn pids_cgroup(&mut self, name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/cgroup/pids{}", self.cgroups_path(name)))
    }

    /// Kills the agent with SIGKILL, as a crash would; its services keep running.
    pub fn kill9(&mut self) {
        let mut agent = self.agent.take().expect("the agent runs");
        agent.kill().expect("SIGKILL the agent");
        agent.wait().expect("reap the agent");
    }

    /// Stops the agent the way an operator does (SIGTERM); its services keep running.
    pub fn stop_agent(&mut self) {
        let mut agent = self.agent.take().expect("the agent runs");
        signal(agent.id() as i32, "TERM");
        let status =
            wait_timeout(&mut agent, Duration::from_secs(15)).expect("the agent exits on SIGTERM");
        assert!(
            status.success(),
            "the agent exited with {status} on SIGTERM:\n{}",
            self.agent_log()
        );
    }

    /// Starts a new agent on the same state directory.
    pub fn restart_agent(&mut self) {
        self.spawn_agent();
    }

    fn cleanup(&mut self) -> Result<(), String> {
        if self.agent.is_none() {
            self.try_spawn_agent()?;
        }
        // Services outlive the agent by design: remove each one explicitly.
        for svc in self.try_ps()? {
            let _ = self.try_cgroups_path(&svc.name);
            let out = self.try_shg(&["remove", &svc.name], CLI_TIMEOUT)?;
            if !out.ok() {
                return Err(format!("cannot remove `{}`: {out}", svc.name));
            }
        }
        let Some(mut agent) = self.agent.take() else {
            return Err("no agent".into());
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(agent.id().to_string())
            .status();
        if wait_timeout(&mut agent, Duration::from_secs(15)).is_none() {
            let _ = agent.kill();
            let _ = agent.wait();
            return Err("the agent did not exit within 15s of SIGTERM".into());
        }
        Ok(())
    }

    /// Last resort: kills whatever still runs in this agent's cgroups and removes them.
    fn reap_cgroups(&mut self) -> Vec<String> {
        // Bundles still on disk name parents the clean-up may not have seen.
        if let Ok(services) = fs::read_dir(self.dir.join("services")) {
            for s in services.flatten() {
                let _ = self.try_cgroups_path(&s.file_name().to_string_lossy());
            }
        }
        let mut left = Vec::new();
        for parent in &self.cgroup_parents {
            let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
                continue;
            };
            for h in hierarchies.flatten() {
                let base = h.path().join(parent);
                if base.is_dir() {
                    remove_cgroup_tree(&base, &mut left);
                }
            }
        }
        left
    }
}

/// Removes a cgroup and everything under it, killing (and listing) what still runs there.
fn remove_cgroup_tree(dir: &Path, left: &mut Vec<String>) {
    for child in fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.path().is_dir() {
            remove_cgroup_tree(&child.path(), left);
        }
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        left.push(format!("pid {pid} in {}", dir.display()));
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    // A cgroup is removable once its last process is gone, which may take a moment.
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Nothing in here may panic while the test itself is panicking: that would abort.
        let result = self.cleanup();
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let leftovers = self.reap_cgroups();
        let mounts = mounts_below(&self.dir);
        for m in &mounts {
            // Lazily, so a busy volume cannot keep the temp directory from going away.
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if std::thread::panicking() {
            // The test already failed; its message matters more than the cleanup's.
            return;
        }
        if let Err(e) = result {
            panic!("cleanup failed: {e}\n--- agent log\n{}", self.agent_log());
        }
        assert!(
            leftovers.is_empty(),
            "processes outlived their removed services: {leftovers:?}"
        );
        assert!(
            mounts.is_empty(),
            "data volumes stayed mounted after their services were removed: {mounts:?}"
        );
    }
}

/// Mount points at or below `dir` in the test's mount namespace, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Children of `parent` that are zombies (exited, never reaped).
pub fn zombie_children(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let (state, ppid) = (
            fields.next(),
            fields.next().and_then(|p| p.parse::<i32>().ok()),
        );
        if state == Some("Z") && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}
