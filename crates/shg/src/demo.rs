//! `shg demo`: a gateway on embedded defaults, hosting the sample services.
//!
//! Builds the sample packages from the samples embedded in the binary (on the host's static
//! busybox), starts the agent, installs whichever samples are not installed yet, prints how to
//! reach them, and serves until Ctrl-C. The services keep running afterwards, as on a real
//! gateway; `shg remove NAME` removes them.
//!
//! The demo also serves the API over HTTPS and makes one token for the household and one per
//! sample provider (kept in `STATE/demo-tokens.json`, readable by root only), so each realm
//! can be tried.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

pub fn run(state_dir: PathBuf, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let packages_dir = state_dir.join("samples");
    std::fs::create_dir_all(&packages_dir)
        .with_context(|| format!("cannot create {}", packages_dir.display()))?;
    let packages = samples::build_all(&packages_dir)?;
    let mut shelf: Vec<(String, String, PathBuf)> = samples::SAMPLES
        .iter()
        .zip(&packages)
        .map(|(sample, package)| {
            let provider = manifest::parse(sample.manifest, sample.name)?.provider;
            Ok((sample.name.to_string(), provider, package.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    // The papers' services, from their binaries when they were built (scripts/demo.sh does).
    let dirs = samples::service_dirs();
    for service in samples::SERVICES {
        match samples::find_service_binary(service, &dirs) {
            Some(binary) => {
                let package = samples::build_service(service, &binary, &packages_dir)?;
                let provider = manifest::parse(service.manifest, service.name)?.provider;
                shelf.push((service.name.to_string(), provider, package));
            }
            None => eprintln!(
                "note: `{}` is not hosted: no static `{}` binary in {} (scripts/demo.sh builds and installs it)",
                service.name,
                service.binary,
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let keys = sign_samples(&state_dir, &shelf)?;

    let agent_cfg = agent::Config::new(state_dir.clone())?;
    // A port taken by something else should not cost the user the whole demo.
    let listen_tls = match std::net::TcpListener::bind(listen) {
        Ok(probe) => {
            drop(probe);
            Some(gateway::Listen {
                addr: listen,
                cert: None,
                key: None,
            })
        }
        Err(e) => {
            eprintln!("warning: cannot serve HTTPS on {listen} ({e}); the demo goes on without it (choose another with --listen)");
            None
        }
    };
    let https = listen_tls.is_some();
    let socket = agent::Layout::new(&state_dir).socket();
    let agent = std::thread::spawn(move || gateway::run(agent_cfg, listen_tls, None));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result: anyhow::Result<Vec<(String, String)>> = rt.block_on(async {
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
        // The demo plays the operator trusting each sample provider's key.
        for key in &keys {
            client
                .add_trust(&api::TrustRequest {
                    provider: key.provider.clone(),
                    public_key: key.to_text(),
                    services: Vec::new(),
                })
                .await
                .with_context(|| format!("trusting the demo key of `{}`", key.provider))?;
        }
        let installed: Vec<String> = client.list().await?.into_iter().map(|s| s.name).collect();
        for (name, _, package) in &shelf {
            if installed.iter().any(|n| n == name) {
                println!("  {name:<13} already installed");
                continue;
            }
            // One service that cannot be hosted here (a port taken on this machine, say)
            // costs the demo that service, not the others.
            match client.install(package, true).await {
                Ok(detail) => println!(
                    "  {name:<13} installed from {} ({})",
                    package.display(),
                    detail.image_digest
                ),
                Err(e) => println!("  {name:<13} not installed: {e}"),
            }
        }
        demo_tokens(&client, &state_dir).await
    });
    match result {
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("the agent keeps running; stop it with Ctrl-C");
        }
        Ok(tokens) => {
            let hosted: Vec<&str> = shelf.iter().map(|(name, _, _)| name.as_str()).collect();
            print_guide(
                &socket,
                &state_dir,
                https.then_some(listen),
                &tokens,
                &hosted,
            )
        }
    }
    agent
        .join()
        .map_err(|_| anyhow::anyhow!("the gateway agent panicked"))??;
    Ok(())
}

/// Signs each package of the shelf (name, provider, file) with its provider's demo key (made
/// once in `STATE/demo-keys`, root only); returns the public keys.
fn sign_samples(
    state_dir: &std::path::Path,
    shelf: &[(String, String, PathBuf)],
) -> anyhow::Result<Vec<trust::PublicKey>> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = state_dir.join("demo-keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut publics: Vec<trust::PublicKey> = Vec::new();
    for (_, provider, package) in shelf {
        let path = dir.join(format!("{provider}.key"));
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => trust::SecretKey::parse(&text, &path.display().to_string())?,
            Err(_) => {
                let key = trust::SecretKey::generate(provider)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                file.write_all(key.to_text().as_bytes())?;
                key
            }
        };
        image::annotate(package, |digest| {
            let (k, v) = key.sign(digest).annotation();
            [(k, v)].into_iter().collect()
        })
        .with_context(|| format!("signing {}", package.display()))?;
        if !publics.contains(&key.public()) {
            publics.push(key.public());
        }
    }
    Ok(publics)
}

/// The demo's tokens, `(whose, token)`: made once and kept in `STATE/demo-tokens.json`.
async fn demo_tokens(
    client: &api::Client,
    state_dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let path = state_dir.join("demo-tokens.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(tokens) = serde_json::from_str::<Vec<(String, String)>>(&text) {
            return Ok(tokens);
        }
    }
    let mut tokens = Vec::new();
    let home = client
        .create_token(&api::TokenRequest {
            realm: "home".into(),
            provider: None,
            client_cert: None,
        })
        .await?;
    tokens.push(("home".to_string(), home.token.unwrap_or_default()));
    for provider in ["acme", "voltwise", "hearth"] {
        let made = client
            .create_token(&api::TokenRequest {
                realm: "provider".into(),
                provider: Some(provider.into()),
                client_cert: None,
            })
            .await?;
        tokens.push((provider.to_string(), made.token.unwrap_or_default()));
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(&tokens)?.as_bytes())?;
    Ok(tokens)
}

fn print_guide(
    socket: &std::path::Path,
    state_dir: &std::path::Path,
    listen: Option<std::net::SocketAddr>,
    tokens: &[(String, String)],
    hosted: &[&str],
) {
    let gw = socket.display();
    let token = |who: &str| {
        tokens
            .iter()
            .find(|(w, _)| w == who)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    let (acme, voltwise, home) = (token("acme"), token("voltwise"), token("home"));
    let cert = state_dir.join("tls/cert.pem");
    let https = listen
        .map(|l| format!(" and https://{l}"))
        .unwrap_or_default();
    let remote = match listen {
        Some(listen) => format!(
            "The web console: https://{listen}/ (accept the self-made certificate, then log in
with a token: the household's is {home}; each provider's is in {}).

The household, over HTTPS as from another machine (tokens are kept in {}):

  shg --gateway https://{listen} --ca-cert {} \\
      --token {home} ps
  ... priority meter 80 | stop thermostat | start thermostat --make-room | stats
",
            state_dir.join("demo-tokens.json").display(),
            state_dir.join("demo-tokens.json").display(),
            cert.display()
        ),
        None => format!(
            "The household (tokens are kept in {}):

  SHG_TOKEN={home} shg ps
",
            state_dir.join("demo-tokens.json").display()
        ),
    };
    let config = state_dir.join("gateway.toml").display().to_string();
    let mut papers = String::new();
    if hosted.contains(&"automation") {
        papers.push_str(
            "  automation    voltwise's home automation: the home's devices publish to MQTT at LAN
                port 1883 (`mosquitto_pub -h GATEWAY -t home/plug1/power -m 2400`), the
                household's page and rules are at http://GATEWAY:8088/
",
        );
    }
    if hosted.contains(&"surveillance") {
        papers.push_str(
            "  surveillance  acme's remote surveillance: the camera PUTs pictures to
                http://GATEWAY:8090/snapshot, the TV watches http://GATEWAY:8090/; set a
                password there to watch from outside at the WAN port 8091
",
        );
    }
    if hosted.contains(&"arcade") {
        papers.push_str(
            "  arcade        arcade's maze: play at http://GATEWAY:8097/ (arrow keys); with its
                provider's lobby, the maze is split over several homes' gateways
",
        );
    }
    if hosted.contains(&"vpn") {
        papers.push_str(
            "  vpn           workfromhome's VPN: WireGuard on the WAN's UDP port 51820; add a
                device's public key at http://GATEWAY:8095/ and let it reach a LAN host
                with `SHG_TOKEN=<household token> shg lan vpn 192.168.1.20`
",
        );
    }
    if !papers.is_empty() {
        papers = format!(
            "Services from the papers, built from this repository (README: \"Services from the papers\"):

{papers}
"
        );
    }
    println!(
        "
SHG demo gateway is running (API on {gw}{https}). In another terminal:

  export SHG_GATEWAY={gw}
  shg ps                                  # the operator (root on the socket) sees every service
  shg stats                               # use against reservation and limit, gateway totals
  shg events -f                           # live, as things happen

Each provider sees only its own services, and only it reads their logs or runs commands in them:

  SHG_TOKEN={acme} \\
    shg exec camera -- wget -qO- http://127.0.0.1:8080/     # acme's camera page, from inside
  SHG_TOKEN={voltwise} \\
    shg logs -f meter                                       # voltwise's live energy readings
  SHG_TOKEN={voltwise} shg ps               # voltwise sees the meter only

{remote}
{papers}Each service has its own address on the gateway's service network (`shg inspect camera`),
reaches the WAN through NAT and nothing else; camera's page is published to the LAN side at
port 8080 of this machine's LAN addresses (`[network]` in {config} says which).
Ctrl-C stops the agent; the services keep running and are re-adopted when it starts again.
",
    );
}
