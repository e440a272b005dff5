//! Entry points that are not API clients: the agent, the runtime helper and the demo.
//!
//! `shg runtime …` (the single-threaded helper the agent forks containers from) is dispatched
//! before clap and before any runtime starts, so it never carries threads into a fork. The
//! containers' PID 1 is the small `shg-init` binary beside `shg` (`src/bin/shg-init.rs`).

use std::ffi::OsString;
use std::path::PathBuf;

use runtime::container::{self, ContainerPaths};

/// Handles `shg runtime …`; returns the exit code, or `None` for any other command.
pub fn early(args: &[OsString]) -> Option<i32> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match args.get(1).map(String::as_str) {
        Some("runtime") => Some(runtime_main(&args[2..])),
        _ => None,
    }
}

/// Internal arguments: `--flag value` pairs, positionals, and the command after `--`.
struct Args {
    flags: std::collections::HashMap<String, String>,
    positional: Vec<String>,
    command: Vec<String>,
}

fn parse_args(args: &[String]) -> Args {
    let mut parsed = Args {
        flags: Default::default(),
        positional: vec![],
        command: vec![],
    };
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--" {
            parsed.command = args[i + 1..].to_vec();
            break;
        }
        if let Some(name) = args[i].strip_prefix("--") {
            parsed.flags.insert(
                name.to_string(),
                args.get(i + 1).cloned().unwrap_or_default(),
            );
            i += 2;
        } else {
            parsed.positional.push(args[i].clone());
            i += 1;
        }
    }
    parsed
}

impl Args {
    fn num(&self, key: &str, default: u64) -> u64 {
        self.flags
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.flags.get(key).cloned().unwrap_or_default())
    }
}

/// `shg runtime create NAME --state-root R --bundle B --log-dir L --status-file S`
/// `shg runtime exec NAME --state-root R --uid U --gid G -- CMD…`
fn runtime_main(args: &[String]) -> i32 {
    let Some(verb) = args.first() else {
        eprintln!("shg runtime: missing verb");
        return 2;
    };
    let args = parse_args(&args[1..]);
    let Some(name) = args.positional.first().cloned() else {
        eprintln!("shg runtime {verb}: missing container name");
        return 2;
    };
    let path = |k: &str| args.path(k);
    match verb.as_str() {
        "create" => {
            let paths = ContainerPaths {
                state_root: path("state-root"),
                bundle: path("bundle"),
                log_dir: path("log-dir"),
                status_file: path("status-file"),
            };
            let attach = match args.flags.get("net") {
                None => None,
                Some(text) => match runtime::net::Attach::from_arg(text) {
                    Some(a) => Some(a),
                    None => {
                        eprintln!("shg runtime create: bad --net {text:?}");
                        return 2;
                    }
                },
            };
            match container::create_and_start(&name, &paths, attach.as_ref()) {
                Ok(pid) => {
                    println!("{pid}");
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
        "exec" => {
            let (uid, gid) = (args.num("uid", 0) as u32, args.num("gid", 0) as u32);
            match container::exec(&name, &path("state-root"), args.command.clone(), uid, gid) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("shg: {e}");
                    126
                }
            }
        }
        other => {
            eprintln!("shg runtime: unknown verb `{other}`");
            2
        }
    }
}

/// `shg gateway run`: the agent, until SIGTERM or SIGINT.
pub fn gateway_run(
    state_dir: PathBuf,
    listen: Option<gateway::Listen>,
    fleet: Option<gateway::Fleet>,
) -> anyhow::Result<()> {
    // One malloc arena for the whole agent: its few threads allocate little, and each arena
    // glibc would give a thread keeps its own freed pages resident (the agent's idle PSS).
    // SAFETY: called before any other thread of this process exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    init_logging();
    let cfg = agent::Config::new(state_dir)?;
    gateway::run(cfg, listen, fleet)?;
    Ok(())
}

/// `shg controller run`: the fleet controller, until SIGTERM or SIGINT.
pub fn controller_run(
    state_dir: PathBuf,
    listen: std::net::SocketAddr,
    database: Option<String>,
    gateway_cert_validity: std::time::Duration,
) -> anyhow::Result<()> {
    init_logging();
    let mut cfg = controller::Config::new(state_dir, listen);
    cfg.database = database;
    cfg.gateway_cert_validity = gateway_cert_validity;
    controller::run(cfg)?;
    Ok(())
}

/// The agent logs to stderr; `RUST_LOG` (e.g. `debug`, `agent=debug`) picks what is shown.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,libcontainer=warn,libcgroups=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `shg demo`: a gateway on embedded defaults hosting the sample services.
pub fn demo(state_dir: PathBuf, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    init_logging();
    crate::demo::run(state_dir, listen)
}
