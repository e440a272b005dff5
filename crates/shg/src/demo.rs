//! `shg demo`: a gateway on embedded defaults, hosting the sample services.
//!
//! Builds the sample packages from the samples embedded in the binary (on the host's static
//! busybox), starts the agent, installs whichever samples are not installed yet, prints how to
//! reach them, and serves until Ctrl-C. The services keep running afterwards, as on a real
//! gateway; `shg remove NAME` removes them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

pub fn run(state_dir: PathBuf) -> anyhow::Result<()> {
    let packages_dir = state_dir.join("samples");
    std::fs::create_dir_all(&packages_dir)
        .with_context(|| format!("cannot create {}", packages_dir.display()))?;
    let packages = samples::build_all(&packages_dir)?;

    let agent_cfg = agent::Config::new(state_dir.clone())?;
    let socket = agent::Layout::new(&state_dir).socket();
    let agent = std::thread::spawn(move || agent::run(agent_cfg));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result: anyhow::Result<()> = rt.block_on(async {
        let client = api::Client::new(&socket.display().to_string())?;
        // Wait for the agent to answer (it recovers its state first).
        let mut tries = 0;
        while client.gateway().await.is_err() {
            if agent.is_finished() {
                anyhow::bail!("the gateway agent stopped during start-up");
            }
            tries += 1;
            anyhow::ensure!(
                tries < 300,
                "the gateway agent did not answer on {}",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let installed: Vec<String> = client.list().await?.into_iter().map(|s| s.name).collect();
        for (sample, package) in samples::SAMPLES.iter().zip(&packages) {
            if installed.iter().any(|n| n == sample.name) {
                println!("  {:<11} already installed", sample.name);
                continue;
            }
            let detail = client
                .install(package, true)
                .await
                .with_context(|| format!("installing sample `{}`", sample.name))?;
            println!(
                "  {:<11} installed from {} ({})",
                sample.name,
                package.display(),
                detail.image_digest
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        eprintln!("the agent keeps running; stop it with Ctrl-C");
    } else {
        print_guide(&socket);
    }
    agent
        .join()
        .map_err(|_| anyhow::anyhow!("the gateway agent panicked"))??;
    Ok(())
}

fn print_guide(socket: &std::path::Path) {
    let gw = socket.display();
    println!(
        "
SHG demo gateway is running (API on {gw}). In another terminal:

  export SHG_GATEWAY={gw}
  shg ps                                              # the three sample services
  shg exec camera -- wget -qO- http://127.0.0.1:8080/ # the camera's page, from inside it
  shg exec thermostat -- wget -qO- http://127.0.0.1:9000/
  shg logs -f meter                                   # live energy readings
  shg exec meter -- tail -n 3 /data/readings.log      # the meter's private data volume
  shg inspect camera                                  # manifest, paths, recent events
  shg stop meter && shg start meter
  shg events

Services have no network route out of their containers yet (that is the networking issue);
reach them with `shg exec`. Ctrl-C stops the agent; the services keep running and are
re-adopted when the agent starts again.
"
    );
}
