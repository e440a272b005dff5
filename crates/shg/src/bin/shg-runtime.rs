//! `shg-runtime`, the agent's runtime helper: a single-threaded process the agent starts to
//! call libcontainer's forking operations, so that no fork ever happens in the multi-threaded
//! agent. A binary of its own beside `shg`, smaller than the agent.
//!
//! `shg-runtime create NAME --state-root R --bundle B --log-dir L --status-file S [--net N]`
//! prints the container's PID; `shg-runtime exec NAME --state-root R --uid U --gid G -- CMD…`
//! exits with the command's code. `shg-runtime serve [--services DIR]` is the same `create` as
//! a fork server (`runtime::forkserver`): the agent starts it once and sends it every start.
//! With `--services`, the server keeps a mount table of its own without the services' mounts
//! (`runtime::mountns`), and each create attaches its service's directory (the bundle's
//! parent) to it.

use std::path::{Path, PathBuf};

use runtime::args::Args;
use runtime::container::{self, ContainerPaths};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(runtime_main(&args))
}

fn runtime_main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("serve") => {
            let isolation = Args::parse(&args[1..]).flags.get("services").and_then(|dir| {
                runtime::mountns::Isolation::enter(Path::new(dir))
                    .map_err(|e| {
                        eprintln!(
                            "shg-runtime serve: no mount table of its own ({e}); starts read the host's"
                        )
                    })
                    .ok()
            });
            runtime::forkserver::serve(
                || isolation.as_ref().and_then(|i| i.spare()),
                |spare, words| {
                    let (verb, args) = words.split_first().ok_or("missing verb")?;
                    match verb.as_str() {
                        "create" => {
                            let args = Args::parse(args);
                            // The service's directory, with its root and volume, as the
                            // host has them now.
                            let bundle = args.path("bundle");
                            if let (Some(spare), Some(dir)) = (spare, bundle.parent()) {
                                spare.attach(dir).map_err(|e| {
                                    format!(
                                        "the runtime helper cannot see {} as the host does: {e}",
                                        dir.display()
                                    )
                                })?;
                            }
                            create(&args).map(|pid| pid.to_string())
                        }
                        other => Err(format!("`{other}` is not served (only `create`)")),
                    }
                },
            )
        }
        Some("create") => match create(&Args::parse(&args[1..])) {
            Ok(pid) => {
                println!("{pid}");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Some("exec") => {
            let args = Args::parse(&args[1..]);
            let Some(name) = args.positional.first() else {
                eprintln!("shg-runtime exec: missing container name");
                return 2;
            };
            let (uid, gid) = (args.num("uid", 0) as u32, args.num("gid", 0) as u32);
            match container::exec(
                name,
                &args.path("state-root"),
                args.command.clone(),
                uid,
                gid,
            ) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("shg: {e}");
                    126
                }
            }
        }
        Some(other) => {
            eprintln!("shg-runtime: unknown verb `{other}`");
            2
        }
        None => {
            eprintln!("shg-runtime: missing verb");
            2
        }
    }
}

/// `create NAME --state-root R --bundle B --log-dir L --status-file S [--exit-fifo F]
/// [--net N]`: the PID of the started container's init.
fn create(args: &Args) -> Result<i32, String> {
    let name = args
        .positional
        .first()
        .ok_or("shg-runtime create: missing container name")?;
    let paths = ContainerPaths {
        state_root: args.path("state-root"),
        bundle: args.path("bundle"),
        log_dir: args.path("log-dir"),
        status_file: args.path("status-file"),
        exit_fifo: args.flags.get("exit-fifo").map(PathBuf::from),
    };
    let attach = match args.flags.get("net") {
        None => None,
        Some(text) => Some(
            runtime::net::Attach::from_arg(text)
                .ok_or_else(|| format!("shg-runtime create: bad --net {text:?}"))?,
        ),
    };
    container::create_and_start(name, &paths, attach.as_ref()).map_err(|e| e.to_string())
}
