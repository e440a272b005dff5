//! `shg-runtime`, the agent's runtime helper: a short-lived, single-threaded process the agent
//! starts to call libcontainer's forking operations, so that no fork ever happens in the
//! multi-threaded agent. A binary of its own beside `shg`, smaller than the agent, so that
//! every start and exec pays for a small exec.
//!
//! `shg-runtime create NAME --state-root R --bundle B --log-dir L --status-file S [--net N]`
//! prints the container's PID; `shg-runtime exec NAME --state-root R --uid U --gid G -- CMD…`
//! exits with the command's code.

use runtime::args::Args;
use runtime::container::{self, ContainerPaths};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(runtime_main(&args))
}

fn runtime_main(args: &[String]) -> i32 {
    let Some(verb) = args.first() else {
        eprintln!("shg-runtime: missing verb");
        return 2;
    };
    let args = Args::parse(&args[1..]);
    let Some(name) = args.positional.first().cloned() else {
        eprintln!("shg-runtime {verb}: missing container name");
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
                        eprintln!("shg-runtime create: bad --net {text:?}");
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
            eprintln!("shg-runtime: unknown verb `{other}`");
            2
        }
    }
}
