//! The fleet controller under many gateways: simulated gateways speaking the real protocol
//! (each enrolled with its own key and certificate, mutual TLS, the same calls `shg gateway
//! run` makes) against a real `shg controller run` process.
//!
//! Measures (1) the controller's CPU per sync (one report and one fetch of the desired
//! state), hence how many gateways one process keeps in sync at a 60 s interval on this
//! machine, with its memory; (2) the time from a change of the desired state (a trust rule,
//! which every gateway's state carries) until every connected, long-polling gateway has it.
//! With `SHG_BENCH_DATABASE=postgres://…` the same runs against PostgreSQL, and with
//! `SHG_BENCH_REPLICAS=2` the gateways are spread over two controller processes.
//!
//! `SHG_BENCH_GATEWAYS=N` sets the fleet size (default 10000; 100 with `SHG_BENCH_QUICK=1`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHG: &str = env!("CARGO_BIN_EXE_shg");

fn quick() -> bool {
    std::env::var("SHG_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Enough descriptors for thousands of connections, here and in the controller we start.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct; a failure leaves the old limit,
    // reported below.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            eprintln!(
                "warning: cannot raise the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    println!("  descriptors per process: {}", limit.rlim_cur);
}

struct Ctl {
    child: Child,
    url: String,
    socket: PathBuf,
}

impl Drop for Ctl {
    fn drop(&mut self) {
        // SAFETY: kill with a PID of a child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_controller(dir: &Path, database: Option<&str>) -> Ctl {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], testdata::free_port()));
    let mut cmd = Command::new(SHG);
    cmd.args(["controller", "run", "--state-dir"])
        .arg(dir)
        .args(["--listen", &addr.to_string()]);
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let socket = dir.join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the controller did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ctl {
        child,
        url: format!("https://{addr}"),
        socket,
    }
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf with a valid name.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// One simulated gateway: its client (mutual TLS with its own certificate).
struct Sim {
    client: api::Client,
}

fn operator(ctl: &Ctl) -> api::Client {
    api::Client::new(ctl.socket.to_str().unwrap()).unwrap()
}

/// Enrolls `n` gateways with `ctl`, each with a key pair it made and a one-time token.
async fn enroll(ctl: &Ctl, work: &Path, n: usize, offset: usize) -> Vec<Sim> {
    let op = operator(ctl);
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let token: api::fleet::EnrollToken = op
            .send_json(
                "POST",
                "/v1/enroll-tokens",
                &api::fleet::EnrollTokenRequest {
                    labels: [("region".to_string(), format!("r{}", (i + offset) % 4))].into(),
                    expires_in_s: None,
                },
            )
            .await
            .unwrap();
        let fingerprint = token.token.rsplit('.').next().unwrap().to_string();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let pinned = api::Client::with_options(
            &ctl.url,
            &api::Options {
                pinned_ca_sha256: Some(fingerprint),
                ..Default::default()
            },
        )
        .unwrap();
        let request = api::fleet::EnrollRequest {
            token: token.token,
            csr,
            agent_version: "bench".into(),
        };
        // A fleet booting at once meets the enrollment rate limit: wait and try again.
        let enrolled: api::fleet::Enrolled = loop {
            match pinned.send_json("POST", "/v1/enroll", &request).await {
                Ok(e) => break e,
                Err(api::ClientError::Api { status: 429, .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("enrolling gateway {i}: {e}"),
            }
        };
        let dir = work.join(format!("gw{}", i + offset));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), &enrolled.certificate).unwrap();
        std::fs::write(dir.join("ca.pem"), &enrolled.ca).unwrap();
        let client = api::Client::with_options(
            &ctl.url,
            &api::Options {
                ca_cert: Some(dir.join("ca.pem")),
                client_cert: Some((dir.join("cert.pem"), dir.join("key.pem"))),
                ..Default::default()
            },
        )
        .unwrap();
        sims.push(Sim { client });
    }
    sims
}

/// A report like a gateway with three services sends.
fn report() -> api::fleet::Report {
    let service = |name: &str| api::fleet::ReportedService {
        provider: "acme".into(),
        name: name.into(),
        version: "1.0".into(),
        state: "running".into(),
        health: "healthy".into(),
        restarts: 0,
        cpu_millicores: Some(12),
        memory_bytes: Some(20 << 20),
        cpu_reserved_millicores: Some(100),
        memory_reserved_bytes: Some(32 << 20),
        figures: None,
    };
    api::fleet::Report {
        agent_version: "bench".into(),
        available: serde_json::json!({ "cpu": 1750, "memory": 3_000_000_000u64 }),
        free: serde_json::json!({ "cpu": 1450, "memory": 2_900_000_000u64 }),
        services: vec![service("camera"), service("meter"), service("thermostat")],
        outcomes: Vec::new(),
        subscriptions: Vec::new(),
    }
}

fn main() {
    raise_fd_limit();
    let n: usize = std::env::var("SHG_BENCH_GATEWAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 100 } else { 10_000 });
    let replicas: usize = std::env::var("SHG_BENCH_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let database = std::env::var("SHG_BENCH_DATABASE").ok();
    assert!(
        replicas == 1 || database.is_some(),
        "replicas share a PostgreSQL database: set SHG_BENCH_DATABASE=postgres://…"
    );
    let work = tempfile::Builder::new()
        .prefix("shg-bench-fleet-")
        .tempdir_in("/tmp")
        .unwrap();
    let ctls: Vec<Ctl> = (0..replicas)
        .map(|i| start_controller(&work.path().join(format!("ctl{i}")), database.as_deref()))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = database
        .as_deref()
        .map(|_| "PostgreSQL")
        .unwrap_or("SQLite");
    println!(
        "fleet bench: {n} simulated gateways, {replicas} controller process(es) on {backend}, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    rt.block_on(async {
        let started = Instant::now();
        let mut sims = Vec::new();
        for (i, ctl) in ctls.iter().enumerate() {
            let share = n / replicas + usize::from(i < n % replicas);
            sims.extend(enroll(ctl, work.path(), share, sims.len()).await);
        }
        let sims = Arc::new(sims);
        println!(
            "  enrolled {n} gateways in {:.1} s ({:.1} ms each)",
            started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64() * 1000.0 / n as f64
        );

        // (1) Sync cost: every gateway reports and fetches its desired state, 32 at a time.
        // The first round fetches it whole (a gateway's first contact); the later rounds send
        // the ETag they got, as `shg gateway run` does, and find nothing new: the steady state
        // of a fleet, which is what a sync interval is about.
        let rounds = if quick() { 2 } else { 3 };
        let etags: Arc<Vec<std::sync::Mutex<Option<String>>>> =
            Arc::new((0..n).map(|_| std::sync::Mutex::new(None)).collect());
        for first in [true, false] {
            let cpu0: f64 = ctls.iter().map(|c| cpu_seconds(c.child.id())).sum();
            let t0 = Instant::now();
            let syncs = if first { n } else { n * rounds };
            let queue = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..32 {
                let (sims, queue, etags) = (sims.clone(), queue.clone(), etags.clone());
                workers.push(tokio::spawn(async move {
                    let mut report = report();
                    loop {
                        let i = queue.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= syncs {
                            return;
                        }
                        // Use moves at every report, as on a real gateway.
                        for (k, s) in report.services.iter_mut().enumerate() {
                            s.cpu_millicores = Some(((i * 7 + k * 13) % 90) as u64);
                            s.memory_bytes = Some((20 << 20) + (i % 4096) as u64 * 1024);
                        }
                        let sim = &sims[i % sims.len()];
                        sim.client
                            .send_json_empty("POST", "/v1/sync/report", &report)
                            .await
                            .unwrap();
                        let known = etags[i % sims.len()].lock().unwrap().clone();
                        let got: Option<(String, api::fleet::Desired)> = sim
                            .client
                            .poll_json("/v1/sync/desired", known.as_deref())
                            .await
                            .unwrap();
                        if let Some((etag, _)) = got {
                            *etags[i % sims.len()].lock().unwrap() = Some(etag);
                        }
                    }
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
            let wall = t0.elapsed().as_secs_f64();
            let cpu: f64 = ctls.iter().map(|c| cpu_seconds(c.child.id())).sum::<f64>() - cpu0;
            let per_sync_ms = cpu * 1000.0 / syncs as f64;
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
            if first {
                println!(
                    "  first sync (report + the whole desired state): {syncs} in {wall:.1} s, {:.0}/s; controller CPU {per_sync_ms:.2} ms per sync",
                    syncs as f64 / wall
                );
                continue;
            }
            println!(
                "  steady sync (report + desired state unchanged since its ETag, resumed TLS session each): {syncs} in {wall:.1} s, {:.0}/s; controller CPU {per_sync_ms:.2} ms per sync",
                syncs as f64 / wall
            );
            println!(
                "  => gateways kept in sync at a 60 s interval with all {cores} cores busy: {:.0}; at one core: {:.0}",
                60_000.0 * cores / per_sync_ms,
                60_000.0 / per_sync_ms
            );
        }
        for (i, c) in ctls.iter().enumerate() {
            println!("  controller {i} RSS after the sync rounds: {:.0} MiB", rss_mib(c.child.id()));
        }

        // (2) Propagation: every gateway long-polls with its current ETag; one change; how
        // long until each has the new state.
        // Gateways connect at 1000 a second (a fleet's polls are spread out in life, and
        // each is a TLS handshake on the same two cores as the controller), and try again
        // after a broken connection as `shg gateway run` does.
        let polling = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut polls = Vec::new();
        for i in 0..n {
            let (sims, polling) = (sims.clone(), polling.clone());
            polls.push(tokio::spawn(async move {
                let sim = &sims[i];
                tokio::time::sleep(Duration::from_micros(1000 * i as u64)).await;
                let etag = loop {
                    match sim
                        .client
                        .poll_json::<api::fleet::Desired>("/v1/sync/desired", None)
                        .await
                    {
                        Ok(Some((etag, _))) => break etag,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                };
                polling.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                loop {
                    match sim
                        .client
                        .poll_json::<api::fleet::Desired>("/v1/sync/desired?wait=30", Some(&etag))
                        .await
                    {
                        Ok(Some(_)) => return Instant::now(),
                        Ok(None) => continue,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }));
        }
        while polling.load(std::sync::atomic::Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the last long-polls reach the controller and settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_held: Vec<f64> = ctls.iter().map(|c| rss_mib(c.child.id())).collect();
        let key = trust::SecretKey::generate("bench").unwrap();
        let change = Instant::now();
        let _: api::TrustRule = operator(&ctls[0])
            .send_json(
                "POST",
                "/v1/trust",
                &api::TrustRequest {
                    provider: "bench".into(),
                    public_key: key.public().to_text(),
                    services: Vec::new(),
                },
            )
            .await
            .unwrap();
        let mut arrivals: Vec<f64> = Vec::with_capacity(n);
        for p in polls {
            arrivals.push(p.await.unwrap().duration_since(change).as_secs_f64());
        }
        arrivals.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |q: f64| arrivals[((arrivals.len() as f64 * q) as usize).min(arrivals.len() - 1)];
        println!(
            "  a new desired state reached {n} long-polling gateways: p50 {:.2} s, p95 {:.2} s, all {:.2} s",
            at(0.5),
            at(0.95),
            arrivals.last().copied().unwrap_or(0.0)
        );
        for (i, rss) in rss_held.iter().enumerate() {
            println!("  controller {i} RSS holding its long-polls: {rss:.0} MiB");
        }
    });
}
