//! What each command does: `pack` runs locally, `gateway run` and `demo` hand over to the
//! agent, and the rest are calls to a running agent through [`api::Client`].

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use api::{Client, ClientError, LogEntry};

use crate::cli::{Cli, Command, GatewayCommand, RemoteCommand, TokenCommand};
use crate::{daemon, output};

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Pack { dir, output } => pack(&dir, &output, cli.json),
        Command::Gateway {
            command:
                GatewayCommand::Run {
                    state_dir,
                    listen,
                    tls_cert,
                    tls_key,
                },
        } => {
            let listen = listen.map(|addr| agent::Listen {
                addr,
                cert: tls_cert,
                key: tls_key,
            });
            daemon::gateway_run(state_dir, listen).map(|()| 0)
        }
        Command::Demo { state_dir, listen } => daemon::demo(state_dir, listen).map(|()| 0),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "shg", &mut io::stdout());
            Ok(0)
        }
        Command::Remote(command) => {
            let options = api::Options {
                token: cli.token.clone(),
                ca_cert: cli.ca_cert.clone(),
                client_cert: cli.client_cert.clone().zip(cli.client_key.clone()),
            };
            let client = Client::with_options(&cli.gateway, &options)?;
            // Only the client commands get this small runtime; the agent builds its own.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(remote(&client, command, cli.json))
        }
    }
}

/// `shg pack DIR -o FILE`: check the manifest, then build the package.
fn pack(dir: &Path, out: &Path, json: bool) -> anyhow::Result<i32> {
    let manifest_path = dir.join(manifest::FILE_NAME);
    if !manifest_path.is_file() {
        bail!(
            "cannot pack {}: {} not found; a package directory holds {} and a rootfs/ directory",
            dir.display(),
            manifest_path.display(),
            manifest::FILE_NAME
        );
    }
    let context = || format!("cannot pack {}", dir.display());
    let manifest = manifest::load(&manifest_path).with_context(context)?;
    let digest = image::pack(dir, out).with_context(context)?;
    let packed = serde_json::json!({
        "name": manifest.name,
        "version": manifest.version,
        "file": out.display().to_string(),
        "digest": digest.to_string(),
    });
    show(&mut io::stdout().lock(), json, &packed, |stdout| {
        writeln!(
            stdout,
            "packed {} {} → {} ({digest})",
            manifest.name,
            manifest.version,
            out.display()
        )
    })?;
    Ok(0)
}

/// The package file `install` sends: `arg` itself, or, when no such file exists and `arg` is
/// an image reference, the image pulled from its registry into the user's cache.
async fn package_file(arg: &Path) -> anyhow::Result<PathBuf> {
    let text = arg.to_string_lossy();
    let reference = match api::registry::Reference::parse(&text) {
        Some(r) if !arg.exists() => r,
        _ => return Ok(arg.to_path_buf()),
    };
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("shg");
    let out = cache.join("packages").join(format!(
        "{}.tar",
        reference.to_string().replace(['/', ':', '@'], "_")
    ));
    std::fs::create_dir_all(out.parent().unwrap_or(&cache))
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let terminal = io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut show = |p: api::registry::Progress| {
        let finished = p.done == p.total;
        if terminal && (finished || last.elapsed() >= std::time::Duration::from_millis(100)) {
            last = std::time::Instant::now();
            let width = 30;
            let filled = (p.done * width).checked_div(p.total).unwrap_or(width) as usize;
            eprint!(
                "\rpulling {reference} [{}{}] {} / {}",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                output::size(p.done),
                output::size(p.total)
            );
            if finished {
                eprintln!();
            }
        }
    };
    let digest = api::registry::pull(&reference, &cache, &out, &mut show).await?;
    if !terminal {
        eprintln!("pulled {reference} ({digest})");
    }
    Ok(out)
}

/// The commands answered by the agent. A package pulled from a registry for `install` is
/// deleted once sent (its blobs stay in the cache).
async fn remote(client: &Client, command: RemoteCommand, json: bool) -> anyhow::Result<i32> {
    let mut pulled = None;
    let command = match command {
        RemoteCommand::Install {
            file,
            no_start,
            dry_run,
            room,
        } => {
            let package = package_file(&file).await?;
            if package != file {
                pulled = Some(package.clone());
            }
            RemoteCommand::Install {
                file: package,
                no_start,
                dry_run,
                room,
            }
        }
        other => other,
    };
    let result = answer(client, command, json).await;
    if let Some(package) = pulled {
        let _ = std::fs::remove_file(package);
    }
    result
}

async fn answer(client: &Client, command: RemoteCommand, json: bool) -> anyhow::Result<i32> {
    let mut out = io::stdout().lock();
    match command {
        RemoteCommand::Install {
            file,
            dry_run: true,
            ..
        } => {
            let v = client.check_install(&file).await?;
            show(&mut out, json, &v, |out| writeln!(out, "{}", v.message))?;
        }
        RemoteCommand::Install {
            file,
            no_start,
            dry_run: false,
            room,
        } => {
            let d = match client.install(&file, !no_start).await {
                Err(e) if room.make_room => {
                    let stop = confirm_room(e, room.yes, &file.display().to_string())?;
                    client.install_making_room(&file, &stop).await?
                }
                result => result?,
            };
            let s = &d.summary;
            show(&mut out, json, &d, |out| {
                writeln!(
                    out,
                    "installed {} {} from {}: {}",
                    s.name,
                    s.version,
                    s.provider,
                    output::status(s)
                )?;
                if no_start {
                    writeln!(out, "start it with `shg start {}`", s.name)?;
                }
                Ok(())
            })?;
        }
        RemoteCommand::Ps => {
            let services = client.list().await?;
            show(&mut out, json, &services, |out| {
                output::services(out, &services)
            })?;
        }
        RemoteCommand::Logs {
            name,
            follow,
            tail,
            timestamps,
        } => {
            let mut err = io::stderr().lock();
            client
                .logs(&name, tail, follow, |entry| {
                    if json {
                        serde_json::to_writer(&mut out, &entry)?;
                        writeln!(out)
                    } else if entry.stream == "stderr" {
                        log_line(&mut err, &entry, timestamps)
                    } else {
                        log_line(&mut out, &entry, timestamps)
                    }
                })
                .await?;
        }
        RemoteCommand::Inspect { name } => {
            let detail = client.get(&name).await?;
            show(&mut out, json, &detail, |out| {
                output::detail(out, &detail, now_ms())
            })?;
        }
        RemoteCommand::Exec { name, command } => {
            let mut err = io::stderr().lock();
            let code = client
                .exec(
                    &name,
                    &command,
                    |bytes| pass(&mut out, bytes),
                    |bytes| pass(&mut err, bytes),
                )
                .await?;
            return Ok(code);
        }
        RemoteCommand::Start {
            name,
            dry_run: true,
            ..
        } => {
            let v = client.check_start(&name).await?;
            show(&mut out, json, &v, |out| writeln!(out, "{}", v.message))?;
        }
        RemoteCommand::Stats => {
            let s = client.stats().await?;
            show(&mut out, json, &s, |out| output::stats(out, &s))?;
        }
        RemoteCommand::Capacity => {
            let c = client.capacity().await?;
            show(&mut out, json, &c, |out| output::capacity(out, &c))?;
        }
        RemoteCommand::Start {
            name,
            dry_run: false,
            room,
        } => {
            let s = match client.start(&name).await {
                Err(e) if room.make_room => {
                    let stop = confirm_room(e, room.yes, &format!("`{name}`"))?;
                    client.start_making_room(&name, &stop).await?
                }
                result => result?,
            };
            show(&mut out, json, &s, |out| {
                writeln!(out, "started {}: {}", s.name, output::status(&s))
            })?;
        }
        RemoteCommand::Stop { name } => {
            let s = client.stop(&name).await?;
            show(&mut out, json, &s, |out| {
                writeln!(out, "stopped {}: {}", s.name, output::status(&s))
            })?;
        }
        RemoteCommand::Restart { name } => {
            let s = client.restart(&name).await?;
            show(&mut out, json, &s, |out| {
                writeln!(out, "restarted {}: {}", s.name, output::status(&s))
            })?;
        }
        RemoteCommand::Priority { name, priority } => {
            let s = client.set_priority(&name, priority).await?;
            show(&mut out, json, &s, |out| {
                writeln!(out, "priority of {} is now {}", s.name, s.priority)
            })?;
        }
        RemoteCommand::Remove { name } => {
            client.remove(&name).await?;
            let done = serde_json::json!({ "removed": name });
            show(&mut out, json, &done, |out| writeln!(out, "removed {name}"))?;
        }
        RemoteCommand::Events {
            service,
            follow: false,
        } => {
            let events = client.events(None, service.as_deref()).await?;
            show(&mut out, json, &events, |out| output::events(out, &events))?;
        }
        RemoteCommand::Events {
            service,
            follow: true,
        } => {
            client
                .follow_events(service.as_deref(), |event| {
                    if json {
                        serde_json::to_writer(&mut out, &event)?;
                        writeln!(out)?;
                    } else {
                        output::events(&mut out, std::slice::from_ref(&event))?;
                    }
                    out.flush()
                })
                .await?;
        }
        RemoteCommand::Metrics => write!(out, "{}", client.metrics().await?)?,
        RemoteCommand::Token { command } => token(client, command, json, &mut out).await?,
        RemoteCommand::Audit => {
            let entries = client.audit(None).await?;
            show(&mut out, json, &entries, |out| output::audit(out, &entries))?;
        }
    }
    Ok(0)
}

/// Prints `value` as JSON with `--json`, else the human form `human` writes.
fn show<W: Write>(
    out: &mut W,
    json: bool,
    value: &impl serde::Serialize,
    human: impl FnOnce(&mut W) -> io::Result<()>,
) -> io::Result<()> {
    if json {
        print_json(out, value)
    } else {
        human(out)
    }
}

fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

fn log_line(out: &mut impl Write, entry: &LogEntry, timestamps: bool) -> io::Result<()> {
    let text = entry.text.strip_suffix('\n').unwrap_or(&entry.text);
    if timestamps {
        writeln!(out, "{} {text}", output::time_ms(entry.time_ms))
    } else {
        writeln!(out, "{text}")
    }
}

/// Exec output is passed on as it comes, prompts without a newline included.
fn pass(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// After a refusal, shows the gateway's proposal of services to stop and asks the household
/// to confirm it (or takes `--yes`). Returns the services to stop; any other error, a
/// refusal without a proposal, or a "no" ends the command with nothing changed.
fn confirm_room(refusal: ClientError, yes: bool, what: &str) -> anyhow::Result<Vec<String>> {
    let Some(stop) = refusal.proposal_to_stop() else {
        return Err(refusal.into());
    };
    let list = stop
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut err = io::stderr().lock();
    writeln!(err, "{refusal}")?;
    if yes {
        writeln!(err, "stopping {list} to make room for {what}")?;
        return Ok(stop);
    }
    use std::io::IsTerminal;
    if !io::stdin().is_terminal() {
        bail!("not confirmed: nothing was stopped; run again with --yes to stop {list} for {what}");
    }
    write!(err, "stop {list} to make room for {what}? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("nothing was stopped");
    }
    Ok(stop)
}

/// `shg token create | list | revoke`.
async fn token(
    client: &Client,
    command: TokenCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            provider,
            home,
            operator,
            cert,
        } => {
            let client_cert = match &cert {
                Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the client certificate {}", path.display())
                })?),
                None => None,
            };
            let realm = match (&provider, home, operator) {
                (Some(_), _, _) => "provider",
                (None, true, _) => "home",
                (None, false, true) => "operator",
                (None, false, false) => {
                    bail!("say whose token it is: --provider NAME, --home or --operator")
                }
            };
            let made = client
                .create_token(&api::TokenRequest {
                    realm: realm.into(),
                    provider,
                    client_cert,
                })
                .await?;
            if json {
                print_json(out, &made)?;
            } else {
                let whom = match &made.provider {
                    Some(p) => format!("provider {p}"),
                    None => made.realm.clone(),
                };
                match (&made.token, &made.client_cert_sha256) {
                    (Some(token), _) => {
                        writeln!(out, "{token}")?;
                        eprintln!(
                            "token {} for {whom}: shown this once, stored only as a hash; give it as SHG_TOKEN",
                            made.id
                        );
                    }
                    (None, sha) => writeln!(
                        out,
                        "client certificate sha256 {} registered for {whom} (credential {})",
                        sha.as_deref().unwrap_or("?"),
                        made.id
                    )?,
                }
            }
        }
        TokenCommand::List => {
            let tokens = client.tokens().await?;
            show(out, json, &tokens, |out| output::tokens(out, &tokens))?;
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(id).await?;
            let done = serde_json::json!({ "revoked": id });
            show(out, json, &done, |out| writeln!(out, "revoked token {id}"))?;
        }
    }
    Ok(())
}
