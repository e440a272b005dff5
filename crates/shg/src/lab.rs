//! `shg lab …`: an emulated ISP with a controller and gateways in network namespaces on this
//! machine (the `lab` crate does the work); its status, commands run inside it, and its end.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Make the lab: WAN router, controller, N enrolled gateways behind shaped links, LANs
    Up {
        /// How many gateways
        #[arg(long, value_name = "N", default_value_t = 3)]
        gateways: u32,
        /// Their access link: adsl (8/1 Mbit/s), vdsl (50/10), ftth (1000/500) or DOWN/UP
        /// (Mbit/s, or with kbit|mbit|gbit)
        #[arg(long, value_name = "PROFILE", default_value = "adsl")]
        link: String,
        /// How many regions (subnets of the ISP) the gateways are spread over
        #[arg(long, value_name = "N", default_value_t = 1)]
        regions: u32,
    },
    /// Each gateway: region, link, WAN address, agent memory, controller state, services
    Status,
    /// Run a command in a gateway's namespace (GATEWAY) or its LAN's (GATEWAY/lan), with
    /// SHG_GATEWAY and SHG_CONTROLLER set so that `shg` there talks to that gateway
    Exec {
        #[arg(value_name = "GATEWAY[/lan]")]
        target: String,
        #[arg(
            value_name = "COMMAND",
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true
        )]
        command: Vec<String>,
    },
    /// Cut a gateway's access link, or bring it back (the gateway keeps running)
    Link {
        #[arg(value_name = "GATEWAY")]
        gateway: String,
        #[arg(value_name = "up|down", value_parser = ["up", "down"])]
        state: String,
    },
    /// Run the papers' demonstration over the lab (needs two gateways in the first region
    /// and a second region: `shg lab up --gateways 3 --regions 2`); each step says what it
    /// does and checks what follows
    Demo,
    /// Undo everything the lab made (also after a failed `up` or killed processes)
    Down,
}

fn shg_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the shg binary to run the lab's agents with")
}

pub fn run(dir: PathBuf, name: String, command: LabCommand, json: bool) -> anyhow::Result<i32> {
    let mut out = io::stdout().lock();
    match command {
        LabCommand::Up {
            gateways,
            link,
            regions,
        } => {
            let link = lab::plan::parse_link(&link).map_err(anyhow::Error::msg)?;
            let plan = lab::plan::plan(&name, &dir, gateways, regions, link)
                .map_err(anyhow::Error::msg)?;
            let lab = lab::Lab::up(plan, shg_binary()?, Arc::new(command::System))?;
            let status = lab.status();
            if json {
                serde_json::to_writer_pretty(&mut out, &status)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "lab `{}` is up: {} gateway(s), controller {} (socket {})",
                    status.name,
                    status.gateways.len(),
                    status.controller_url,
                    status.controller_socket.display()
                )?;
                writeln!(out, "note: {}", status.note)?;
                table(&mut out, &status)?;
            }
            Ok(0)
        }
        LabCommand::Status => {
            let lab = lab::Lab::load(&dir, &name, shg_binary()?)?;
            let status = lab.status();
            if json {
                serde_json::to_writer_pretty(&mut out, &status)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "lab `{}`: controller {} (pid {}, {} KiB), link {} ({} down, {} up)",
                    status.name,
                    status.controller_url,
                    opt(status.controller_pid),
                    opt(status.controller_rss_kib),
                    status.link.name,
                    rate(status.down_bits),
                    rate(status.up_bits)
                )?;
                writeln!(out, "note: {}", status.note)?;
                table(&mut out, &status)?;
            }
            Ok(0)
        }
        LabCommand::Exec { target, command } => {
            let lab = lab::Lab::load(&dir, &name, shg_binary()?)?;
            let mut cmd = lab.exec_command(&target, &command)?;
            let status = cmd
                .status()
                .with_context(|| format!("cannot run `{}` in {target}", command.join(" ")))?;
            Ok(status.code().unwrap_or(128))
        }
        LabCommand::Link { gateway, state } => {
            let lab = lab::Lab::load(&dir, &name, shg_binary()?)?;
            lab.link(&gateway, state == "up")?;
            writeln!(out, "{gateway}: access link {state}")?;
            Ok(0)
        }
        LabCommand::Demo => {
            let lab = lab::Lab::load(&dir, &name, shg_binary()?)?;
            lab::demo::Demo::new(&lab, &mut out).run()?;
            Ok(0)
        }
        LabCommand::Down => {
            let mut lab = match lab::Lab::load(&dir, &name, shg_binary()?) {
                Ok(lab) => lab,
                Err(_) if !lab::plan::lab_dir(&dir, &name).join("lab.json").exists() => {
                    writeln!(out, "no lab `{name}` is up")?;
                    return Ok(0);
                }
                Err(e) => return Err(e.into()),
            };
            lab.down()?;
            writeln!(out, "lab `{name}` is down")?;
            Ok(0)
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

fn rate(bits: u64) -> String {
    // `is_multiple_of` needs Rust 1.87 and the workspace supports 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    let whole_mbit = bits >= 1_000_000 && bits % 1_000_000 == 0;
    if whole_mbit {
        format!("{}Mbit/s", bits / 1_000_000)
    } else {
        format!("{}kbit/s", bits / 1_000)
    }
}

fn table(out: &mut impl Write, status: &lab::Status) -> io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<7} {:<10} {:<15} {:>8} {:>9}  {:<13} SERVICES",
        "GATEWAY", "REGION", "LINK", "WAN", "PID", "RSS(KiB)", "CONTROLLER"
    )?;
    for g in &status.gateways {
        writeln!(
            out,
            "{:<8} {:<7} {:<10} {:<15} {:>8} {:>9}  {:<13} {}",
            g.name,
            g.region,
            g.link,
            g.wan_address,
            opt(g.pid),
            opt(g.rss_kib),
            g.controller,
            if g.services.is_empty() {
                "-".to_string()
            } else {
                g.services.join(",")
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lab_names_each_agents_cgroup_parent_as_the_agent_does() {
        let link = lab::plan::parse_link("adsl").unwrap();
        let plan = lab::plan::plan("t1", std::path::Path::new("/run/shg-lab"), 3, 2, link).unwrap();
        for gw in &plan.gateways {
            let agent = agent::Config::new(gw.state_dir.clone()).unwrap();
            assert_eq!(gw.cgroup_parent(), agent.cgroup_parent);
        }
    }
}
