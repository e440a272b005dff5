//! Entry points that are not API clients: the agent, the controller and the demo.
//!
//! The runtime helper the agent forks containers from is a small binary of its own beside
//! `shg`: `shg-runtime` (`src/bin/shg-runtime.rs`). The containers' PID 1 (`shg-init`) is
//! carried inside `shg` and written to the state directory by the agent
//! (`runtime::init::BINARY`).

use std::path::PathBuf;

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
