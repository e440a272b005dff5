//! Service networking: each service's own network namespace joined to a gateway bridge, NAT to
//! the WAN, published ports, default deny between everything with explicit exports and
//! imports, and a guaranteed bandwidth per service.
//!
//! The shape, per agent (names carry the agent's tag `T`, 8 hex digits, so several agents on
//! one host never meet):
//!
//! - bridge `shgbT` holding `.1` of the services' /24; each service is slot `S` (2..=254),
//!   address `.S`, with a veth `shvTS` on the bridge (bridge port *isolated*: services never
//!   talk at layer 2, every packet between them crosses the firewall) and its peer renamed
//!   `eth0` inside the service;
//! - nftables table `inet shg_T`, rewritten whole and atomically from the installed services
//!   ([`plan::ruleset`]);
//! - two IFB devices, `shgdT` (download: towards services and LAN hosts) and `shguT`
//!   (upload), each with one HTB tree at the link's capacity: class `1:S` per running service
//!   (rate = its reservation, ceil = its limit) and class `1:fffe` for the gateway's own
//!   LAN↔WAN forwarding (rate = the operator's reserve).
//!
//! The pure part ([`plan`]) decides what the rules are; [`ops`] runs `ip`, `tc` and `nft`
//! through a [`command::Runner`] (a fake one in tests).

pub mod config;
pub mod ops;
pub mod plan;

pub use config::Config;
pub use ops::Network;
pub use plan::{Member, Names};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool (`ip`, `tc`, `nft`) failed.
    #[error(transparent)]
    Command(#[from] command::CommandError),
    /// A kernel setting under /proc/sys could not be written.
    #[error("writing {value} to {path} failed: {source}")]
    Sysctl {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// The `[network]` table of gateway.toml is wrong.
    #[error("gateway.toml [network] {field}: {reason}")]
    Config { field: String, reason: String },
}
