//! What each command does: `pack` runs locally, `gateway run` and `demo` hand over to the
//! agent, and the rest are calls to a running agent through [`api::Client`].

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use api::{Client, ClientError, LogEntry};

use crate::cli::{
    CatalogCommand, Cli, Command, ControllerCommand, GatewayCommand, KeyCommand, RemoteCommand,
    TokenCommand, TrustCommand,
};
use crate::{daemon, output};

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Pack { dir, output, sign } => pack(&dir, &output, sign.as_deref(), cli.json),
        Command::Key {
            command: KeyCommand::Gen { provider, dir },
        } => key_gen(&provider, &dir, cli.json),
        Command::Catalog { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(catalog_command(command, cli.json))
        }
        Command::Sign {
            target,
            key,
            manifest,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(sign(&target, &key, manifest.as_deref(), cli.json))
        }
        Command::Gateway {
            command:
                GatewayCommand::Run {
                    state_dir,
                    listen,
                    tls_cert,
                    tls_key,
                    controller,
                    enroll_token,
                },
        } => {
            let listen = listen.map(|addr| gateway::Listen {
                addr,
                cert: tls_cert,
                key: tls_key,
            });
            let fleet = controller.map(|controller| gateway::Fleet {
                controller,
                enroll_token,
            });
            daemon::gateway_run(state_dir, listen, fleet).map(|()| 0)
        }
        Command::Controller {
            command:
                ControllerCommand::Run {
                    state_dir,
                    listen,
                    database,
                    gateway_cert_validity,
                },
        } => daemon::controller_run(
            state_dir,
            listen,
            database,
            parse_span(&gateway_cert_validity)?,
        )
        .map(|()| 0),
        Command::Fleet {
            controller,
            command,
        } => {
            let options = api::Options {
                token: cli.token.clone(),
                ca_cert: cli.ca_cert.clone(),
                ..Default::default()
            };
            let client = Client::with_options(&controller, &options)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(crate::fleet::run(&client, command, cli.json))
        }
        Command::Lab { dir, name, command } => crate::lab::run(dir, name, command, cli.json),
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
                ..Default::default()
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

/// `7d`, `12h`, `30m`, `45s`: a span of time from now.
pub(crate) fn parse_span(text: &str) -> anyhow::Result<std::time::Duration> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => bail!("`{text}` is not a span of time; write e.g. `7d`, `12h`, `30m` or `45s`"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a span of time; write e.g. `7d` or `12h`"))?;
    Ok(std::time::Duration::from_secs(n * scale))
}

/// `shg catalog init|publish`.
async fn catalog_command(command: CatalogCommand, json: bool) -> anyhow::Result<i32> {
    let mut out = io::stdout().lock();
    match command {
        CatalogCommand::Init {
            repo,
            keys,
            expires_in,
        } => {
            let expires = SystemTime::now() + parse_span(&expires_in)?;
            let root = catalog::init(&repo, &keys, expires).await?;
            let done = serde_json::json!({ "root": root.display().to_string() });
            show(&mut out, json, &done, |out| {
                writeln!(
                    out,
                    "catalog made in {}; pin {} on each gateway ([catalog] root = …)",
                    repo.display(),
                    root.display()
                )
            })?;
        }
        CatalogCommand::Publish {
            repo,
            keys,
            packages,
            expires_in,
        } => {
            let expires = SystemTime::now() + parse_span(&expires_in)?;
            let mut entries = Vec::new();
            for file in &packages {
                let staging = tempfile::tempdir().context("cannot make a temporary directory")?;
                let package = image::open(file, &staging.path().join("p"))
                    .with_context(|| format!("cannot list {}", file.display()))?;
                let manifest =
                    manifest::parse(&package.manifest_toml, "shg-service.toml (in the package)")
                        .with_context(|| format!("cannot list {}", file.display()))?;
                let blob = package
                    .dir
                    .join("blobs/sha256")
                    .join(package.digest.trim_start_matches("sha256:"));
                let manifest_json = std::fs::read(&blob)
                    .with_context(|| format!("cannot read {}", blob.display()))?;
                entries.push(catalog::NewEntry {
                    service: manifest.name,
                    version: manifest.version,
                    provider: manifest.provider,
                    reference: None,
                    manifest_json,
                });
            }
            let version = catalog::publish(&repo, &keys, &entries, expires).await?;
            let listed: Vec<String> = entries
                .iter()
                .map(|e| format!("{} {}", e.service, e.version))
                .collect();
            let done = serde_json::json!({ "version": version, "listed": listed });
            show(&mut out, json, &done, |out| {
                writeln!(
                    out,
                    "published catalog version {version}{}",
                    if listed.is_empty() {
                        " (expiry renewed)".to_string()
                    } else {
                        format!(": {}", listed.join(", "))
                    }
                )
            })?;
        }
    }
    Ok(0)
}

/// Reads a provider's secret key file.
fn secret_key(path: &Path) -> anyhow::Result<trust::SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key {}", path.display()))?;
    Ok(trust::SecretKey::parse(&text, &path.display().to_string())?)
}

/// `shg key gen PROVIDER`: writes `PROVIDER.key` (0600, never overwritten) and `PROVIDER.pub`.
fn key_gen(provider: &str, dir: &Path, json: bool) -> anyhow::Result<i32> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = trust::SecretKey::generate(provider)?;
    let secret = dir.join(format!("{provider}.key"));
    let public = dir.join(format!("{provider}.pub"));
    for path in [&secret, &public] {
        if path.exists() {
            bail!(
                "{} exists; a key is never overwritten (move it away first, or use --dir)",
                path.display()
            );
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("cannot create {}", secret.display()))?;
    file.write_all(key.to_text().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", secret.display()))?;
    std::fs::write(&public, key.public().to_text())
        .with_context(|| format!("cannot write {}", public.display()))?;
    let id = key.public().id();
    let made = serde_json::json!({
        "provider": provider,
        "key_id": id,
        "secret_key": secret.display().to_string(),
        "public_key": public.display().to_string(),
    });
    show(&mut io::stdout().lock(), json, &made, |out| {
        writeln!(
            out,
            "key {id} of provider {provider}:\n  {}  secret: sign with it, keep it to yourself\n  {}  public: the gateway operator trusts it with `shg trust add --provider {provider} {}`",
            secret.display(),
            public.display(),
            public.display()
        )
    })?;
    Ok(0)
}

/// Signs a package file in place (its `index.json` gains the signature; the digest stays),
/// after checking the package and that the key is its provider's.
fn sign_file(file: &Path, key: &trust::SecretKey) -> anyhow::Result<(String, String)> {
    let staging = tempfile::tempdir().context("cannot make a temporary directory")?;
    let package = image::open(file, &staging.path().join("p"))
        .with_context(|| format!("cannot sign {}", file.display()))?;
    let manifest = manifest::parse(&package.manifest_toml, "shg-service.toml (in the package)")
        .with_context(|| format!("cannot sign {}", file.display()))?;
    if manifest.provider != key.provider() {
        bail!(
            "{} is provider `{}`'s package; the key is provider `{}`'s, and the gateway would refuse the signature",
            file.display(),
            manifest.provider,
            key.provider()
        );
    }
    let digest = image::annotate(file, |digest| {
        let (k, v) = key.sign(digest).annotation();
        [(k, v)].into_iter().collect()
    })?;
    Ok((manifest.name, digest))
}

/// `shg sign FILE|REFERENCE --key KEY [--manifest FILE]`.
async fn sign(
    target: &str,
    key_path: &Path,
    manifest_path: Option<&Path>,
    json: bool,
) -> anyhow::Result<i32> {
    let key = secret_key(key_path)?;
    let beside = manifest_path.map(read_manifest).transpose()?;
    let path = Path::new(target);
    let (what, digest) = match (registry::Reference::parse(target), &beside) {
        (Some(reference), None) if !path.exists() => {
            let digest = registry::push_signatures(&reference, |digest| {
                let (k, v) = key.sign(digest).annotation();
                [(k, v)].into_iter().collect()
            })
            .await?;
            (reference.to_string(), digest)
        }
        (Some(reference), Some(text)) if !path.exists() => {
            let digest = sign_image_in_registry(&reference, text, &key).await?;
            (reference.to_string(), digest)
        }
        (_, None) => {
            let (name, digest) = sign_file(path, &key)?;
            (format!("{} ({name})", path.display()), digest)
        }
        (_, Some(text)) => {
            let (name, digest) = sign_image_file(path, text, &key)?;
            (format!("{} ({name})", path.display()), digest)
        }
    };
    let manifest_digest = beside.as_deref().map(image::manifest_digest);
    let signed = serde_json::json!({
        "signed": what,
        "digest": digest,
        "manifest_digest": manifest_digest,
        "signed_digest": manifest_digest.as_deref().map(|m| image::pair_digest(&digest, m)).unwrap_or_else(|| digest.clone()),
        "key_id": key.public().id(),
    });
    show(&mut io::stdout().lock(), json, &signed, |out| {
        let with = match (manifest_path, &manifest_digest) {
            (Some(p), Some(d)) => format!(" and {} ({d})", p.display()),
            _ => String::new(),
        };
        writeln!(
            out,
            "signed {what} ({digest}){with} with key {} of {}",
            key.public().id(),
            key.provider()
        )
    })?;
    Ok(0)
}

/// The text of a service manifest given beside a standard image (`--manifest FILE`).
fn read_manifest(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the service manifest {}", path.display()))?;
    if text.len() > api::MAX_MANIFEST {
        bail!(
            "{} is {} bytes; a service manifest beside an image may have at most {}",
            path.display(),
            text.len(),
            api::MAX_MANIFEST
        );
    }
    Ok(text)
}

/// Checks the manifest `text` given beside the image whose config is `config` as the gateway
/// will (completed from the image's config, then every rule), and that `key` is its
/// provider's. Returns the manifest.
fn check_pair(
    config: &serde_json::Value,
    text: &str,
    key: &trust::SecretKey,
    what: &str,
) -> anyhow::Result<manifest::Manifest> {
    let origin = "shg-service.toml (beside the image)";
    let defaults = manifest::ImageDefaults::from_image_config(config)
        .map_err(|e| anyhow::anyhow!("cannot sign {what}: {e}"))?;
    let completed = manifest::complete(text, origin, &defaults)
        .with_context(|| format!("cannot sign {what}"))?;
    let manifest =
        manifest::parse(&completed, origin).with_context(|| format!("cannot sign {what}"))?;
    if manifest.provider != key.provider() {
        bail!(
            "cannot sign {what}: its manifest is provider `{}`'s; the key is provider `{}`'s, and the gateway would refuse the signature",
            manifest.provider,
            key.provider()
        );
    }
    Ok(manifest)
}

/// Signs the image file `file` together with the manifest `text` given beside it: the
/// signature over their pair digest goes into its `index.json` (the file's digest stays).
fn sign_image_file(
    file: &Path,
    text: &str,
    key: &trust::SecretKey,
) -> anyhow::Result<(String, String)> {
    let staging = tempfile::tempdir().context("cannot make a temporary directory")?;
    let package = image::open_with(file, &staging.path().join("p"), Some(text))
        .with_context(|| format!("cannot sign {}", file.display()))?;
    let manifest = check_pair(&package.config, text, key, &file.display().to_string())?;
    let of_text = image::manifest_digest(text);
    let digest = image::annotate(file, |digest| {
        let pair = image::pair_digest(digest, &of_text);
        let (k, v) = key.sign(&pair).annotation_for(Some(&of_text));
        [(k, v)].into_iter().collect()
    })?;
    Ok((manifest.name, digest))
}

/// Signs the image `reference` names together with the manifest `text` given beside it; the
/// signature is stored beside the image. Returns the image's digest.
async fn sign_image_in_registry(
    reference: &registry::Reference,
    text: &str,
    key: &trust::SecretKey,
) -> anyhow::Result<String> {
    let (digest, config) = registry::image_config(reference).await?;
    let config: serde_json::Value = serde_json::from_slice(&config)
        .with_context(|| format!("cannot sign {reference}: its image config is not JSON"))?;
    check_pair(&config, text, key, &reference.to_string())?;
    // By digest from here: the image checked is the image signed, wherever the tag moves.
    let pinned = registry::Reference {
        reference: digest.clone(),
        ..reference.clone()
    };
    let of_text = image::manifest_digest(text);
    registry::push_signatures(&pinned, |digest| {
        let pair = image::pair_digest(digest, &of_text);
        let (k, v) = key.sign(&pair).annotation_for(Some(&of_text));
        [(k, v)].into_iter().collect()
    })
    .await?;
    Ok(digest)
}

/// `shg pack DIR -o FILE [--sign KEY]`: check the manifest, then build the package.
fn pack(dir: &Path, out: &Path, sign: Option<&Path>, json: bool) -> anyhow::Result<i32> {
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
    // The key is read (and matched to the provider) before anything is written.
    let key = sign.map(secret_key).transpose()?;
    if let Some(key) = &key {
        if key.provider() != manifest.provider {
            bail!(
                "cannot sign {}: it is provider `{}`'s package and {} is provider `{}`'s key",
                dir.display(),
                manifest.provider,
                sign.unwrap_or(Path::new("")).display(),
                key.provider()
            );
        }
    }
    let digest = image::pack(dir, out).with_context(context)?;
    if let Some(key) = &key {
        image::annotate(out, |d| {
            let (k, v) = key.sign(d).annotation();
            [(k, v)].into_iter().collect()
        })
        .with_context(context)?;
    }
    let packed = serde_json::json!({
        "name": manifest.name,
        "version": manifest.version,
        "file": out.display().to_string(),
        "digest": digest.to_string(),
        "signed_by": key.as_ref().map(|k| k.public().id()),
    });
    show(&mut io::stdout().lock(), json, &packed, |stdout| {
        writeln!(
            stdout,
            "packed {} {} → {} ({digest}){}",
            manifest.name,
            manifest.version,
            out.display(),
            key.as_ref()
                .map(|k| format!(", signed with key {}", k.public().id()))
                .unwrap_or_default()
        )
    })?;
    Ok(0)
}

/// The package file `install` sends: `arg` itself, or, when no such file exists and `arg` is
/// an image reference, the image pulled from its registry into the user's cache (then the
/// reference comes back too).
async fn package_file(arg: &Path) -> anyhow::Result<(PathBuf, Option<String>)> {
    let text = arg.to_string_lossy();
    match registry::Reference::parse(&text) {
        Some(r) if !arg.exists() => Ok((pull(&r).await?, Some(r.to_string()))),
        _ => Ok((arg.to_path_buf(), None)),
    }
}

/// Pulls `reference` into the user's cache; returns the package file.
async fn pull(reference: &registry::Reference) -> anyhow::Result<PathBuf> {
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
    let mut show = |p: registry::Progress| {
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
    let digest = registry::pull(reference, &cache, &out, &mut show).await?;
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
            allow_unsigned,
            pull_on_gateway,
            manifest,
        } => {
            let manifest = manifest.as_deref().map(read_manifest).transpose()?;
            if pull_on_gateway {
                let reference = file.to_string_lossy().into_owned();
                if registry::Reference::parse(&reference).is_none() {
                    bail!("--pull-on-gateway needs an image reference (REGISTRY/REPOSITORY[:TAG|@sha256:HEX]), not {reference:?}");
                }
                let d = client
                    .pull(&api::PullRequest {
                        reference: reference.clone(),
                        start: !no_start,
                        allow_unsigned,
                        manifest,
                    })
                    .await?;
                let s = &d.summary;
                show(&mut io::stdout().lock(), json, &d, |out| {
                    writeln!(
                        out,
                        "the gateway pulled {reference} and installed {} {} from {}: {}",
                        s.name,
                        s.version,
                        s.provider,
                        output::status(s)
                    )
                })?;
                return Ok(0);
            }
            let (package, source) = package_file(&file).await?;
            if package != file {
                pulled = Some(package.clone());
            }
            let params = api::InstallParams {
                start: !no_start,
                stop: Vec::new(),
                allow_unsigned,
                source,
                manifest,
            };
            let result = install(client, &package, &params, dry_run, room, json).await;
            if let Some(package) = pulled {
                let _ = std::fs::remove_file(package);
            }
            return result;
        }
        RemoteCommand::Update {
            name,
            target,
            window,
            allow_unsigned,
            manifest,
        } => {
            let manifest = manifest.as_deref().map(read_manifest).transpose()?;
            let window_s = window.as_deref().map(parse_window).transpose()?;
            let (package, source) = update_package(client, &name, target.as_deref()).await?;
            if source.is_some() {
                pulled = Some(package.clone());
            }
            let params = api::UpdateParams {
                allow_unsigned,
                window_s,
                source,
                manifest,
            };
            let result = client.update(&name, &package, &params).await;
            if let Some(package) = pulled {
                let _ = std::fs::remove_file(package);
            }
            let d = result?;
            let s = &d.summary;
            show(&mut io::stdout().lock(), json, &d, |out| {
                writeln!(
                    out,
                    "updated {} to {}{}: {}",
                    s.name,
                    s.version,
                    d.previous_version
                        .as_ref()
                        .map(|p| format!(" (from {p})"))
                        .unwrap_or_default(),
                    output::status(s)
                )?;
                if s.desired == "running" {
                    writeln!(
                        out,
                        "the gateway rolls it back by itself if it fails within its health window; `shg events --service {}` tells",
                        s.name
                    )?;
                }
                Ok(())
            })?;
            return Ok(0);
        }
        other => other,
    };
    let result = answer(client, command, json).await;
    if let Some(package) = pulled {
        let _ = std::fs::remove_file(package);
    }
    result
}

/// `shg update NAME [TARGET]`: the package to send and the reference it was pulled from.
async fn update_package(
    client: &Client,
    name: &str,
    target: Option<&str>,
) -> anyhow::Result<(PathBuf, Option<String>)> {
    if let Some(t) = target {
        if Path::new(t).exists() || registry::Reference::parse(t).is_some() {
            return package_file(Path::new(t)).await;
        }
    }
    let detail = client.get(name).await?;
    let Some(source) = detail
        .source
        .as_deref()
        .and_then(registry::Reference::parse)
    else {
        bail!(
            "`{name}` was installed from a file, so there is no repository to find {} in; give the new package: `shg update {name} FILE|REFERENCE`",
            target.map_or("a newer version".to_string(), |v| format!("version {v}"))
        );
    };
    let reference = match target {
        None => source,
        Some(version) if valid_tag(version) => registry::Reference {
            reference: version.to_string(),
            ..source
        },
        Some(other) => bail!(
            "`{other}` is neither a package file, a registry reference, nor a version (a tag: letters, digits, '.', '_', '-')"
        ),
    };
    Ok((pull(&reference).await?, Some(reference.to_string())))
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `--window 30s`: seconds, minutes (`2m`) or plain seconds.
fn parse_window(text: &str) -> anyhow::Result<u64> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .with_context(|| format!("`{text}` is not a health window; write e.g. `30s` or `2m`"))
}

/// `shg install`: dry run, or install (making room when asked).
async fn install(
    client: &Client,
    file: &Path,
    params: &api::InstallParams,
    dry_run: bool,
    room: crate::cli::MakeRoom,
    json: bool,
) -> anyhow::Result<i32> {
    let mut out = io::stdout().lock();
    if dry_run {
        let v = client.check_install_with(file, params).await?;
        show(&mut out, json, &v, |out| writeln!(out, "{}", v.message))?;
        return Ok(0);
    }
    let no_start = !params.start;
    let d = match client.install_with(file, params).await {
        Err(e) if room.make_room => {
            let stop = confirm_room(e, room.yes, &file.display().to_string())?;
            let params = api::InstallParams {
                stop,
                ..params.clone()
            };
            client.install_with(file, &params).await?
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
        if s.unsigned {
            writeln!(
                out,
                "WARNING: {} is UNSIGNED: no trusted key vouches for it (--allow-unsigned)",
                s.name
            )?;
        }
        if no_start {
            writeln!(out, "start it with `shg start {}`", s.name)?;
        }
        Ok(())
    })?;
    Ok(0)
}

async fn answer(client: &Client, command: RemoteCommand, json: bool) -> anyhow::Result<i32> {
    let mut out = io::stdout().lock();
    match command {
        RemoteCommand::Install { .. } | RemoteCommand::Update { .. } => {
            unreachable!("handled by `remote`")
        }
        RemoteCommand::Rollback { name } => {
            let d = client.rollback(&name).await?;
            let s = &d.summary;
            show(&mut out, json, &d, |out| {
                writeln!(
                    out,
                    "rolled {} back to {}: {}",
                    s.name,
                    s.version,
                    output::status(s)
                )
            })?;
        }
        RemoteCommand::Trust { command } => trust(client, command, json, &mut out).await?,
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
        RemoteCommand::Metrics { name: Some(name) } => {
            // The service's answer as it gave it (`--json` changes nothing: it is its own).
            let body = client.service_metrics(&name).await?;
            out.write_all(&body)?;
            if !body.ends_with(b"\n") {
                writeln!(out)?;
            }
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
        RemoteCommand::LanAccess { name, hosts, none } => {
            let s = if hosts.is_empty() && !none {
                client.get(&name).await?.summary
            } else {
                client.set_lan(&name, &hosts).await?
            };
            show(&mut out, json, &s, |out| match s.lan.as_slice() {
                [] => writeln!(out, "{} may reach no host on the LAN", s.name),
                lan => writeln!(out, "{} may reach on the LAN: {}", s.name, lan.join(", ")),
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
        RemoteCommand::Metrics { name: None } => write!(out, "{}", client.metrics().await?)?,
        RemoteCommand::Token { command } => token(client, command, json, &mut out).await?,
        RemoteCommand::Audit => {
            let entries = client.audit(None).await?;
            show(&mut out, json, &entries, |out| output::audit(out, &entries))?;
        }
        RemoteCommand::Subscribe { name, provider } => {
            let service: api::fleet::ServiceRef = client
                .send_json(
                    "POST",
                    "/v1/subscriptions",
                    &api::fleet::Subscribe { name, provider },
                )
                .await?;
            show(&mut out, json, &service, |out| {
                writeln!(
                    out,
                    "subscribed to `{}` of {}; the fleet controller adds it to this gateway, whose admission decides whether it runs (`shg ps`)",
                    service.name, service.provider
                )
            })?;
        }
        RemoteCommand::Unsubscribe { name } => {
            client
                .send_empty("DELETE", &format!("/v1/subscriptions/{name}"))
                .await?;
            if !json {
                writeln!(out, "left `{name}`; the gateway removes it")?;
            }
        }
        RemoteCommand::Subscriptions { catalog: true } => {
            let entries: Vec<api::fleet::CatalogEntry> =
                client.get_json("/v1/fleet/catalog").await?;
            show(&mut out, json, &entries, |out| {
                writeln!(
                    out,
                    "{:<16} {:<10} {:<10} DESCRIPTION",
                    "NAME", "PROVIDER", "VERSION"
                )?;
                for e in &entries {
                    writeln!(
                        out,
                        "{:<16} {:<10} {:<10} {}",
                        e.name, e.provider, e.version, e.description
                    )?;
                }
                Ok(())
            })?;
        }
        RemoteCommand::Subscriptions { catalog: false } => {
            let subs: api::fleet::Subscriptions = client.get_json("/v1/subscriptions").await?;
            show(&mut out, json, &subs, |out| {
                match &subs.controller {
                    None => writeln!(out, "this gateway is in no fleet")?,
                    Some(c) => writeln!(
                        out,
                        "in the fleet of {c} as {}",
                        subs.gateway_id.as_deref().unwrap_or("?")
                    )?,
                }
                for s in &subs.subscriptions {
                    writeln!(out, "{} ({})", s.name, s.provider)?;
                }
                Ok(())
            })?;
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
async fn trust(
    client: &Client,
    command: TrustCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        TrustCommand::Add {
            provider,
            key,
            services,
        } => {
            let public_key = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the public key {}", key.display()))?;
            let services = services
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let rule = client
                .add_trust(&api::TrustRequest {
                    provider,
                    public_key,
                    services,
                })
                .await?;
            show(out, json, &rule, |out| {
                writeln!(
                    out,
                    "trusting key {} of provider {} for {}",
                    rule.key_id,
                    rule.provider,
                    if rule.services.is_empty() {
                        "any service".to_string()
                    } else {
                        rule.services.join(", ")
                    }
                )
            })?;
        }
        TrustCommand::List => {
            let rules = client.trust_rules().await?;
            show(out, json, &rules, |out| output::trust_rules(out, &rules))?;
        }
        TrustCommand::Remove { key_id } => {
            client.remove_trust(&key_id).await?;
            let done = serde_json::json!({ "removed": key_id });
            show(out, json, &done, |out| {
                writeln!(out, "key {key_id} is no longer trusted")
            })?;
        }
    }
    Ok(())
}

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
