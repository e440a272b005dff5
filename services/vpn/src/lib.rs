//! workfromhome's VPN: a WireGuard endpoint in userspace, published on the gateway's WAN
//! side, that gives the household's remote devices the LAN hosts the household allowed.
//!
//! - [`peers`]: the endpoint's key and the household's peers (the only keys let in);
//! - [`tunnel`]: WireGuard and a userspace TCP/IP stack; a laptop's TCP connection to a LAN
//!   host is ended here and opened again from the service, so the gateway's firewall (the
//!   household's grant, `shg lan`) decides which hosts are reached;
//! - [`page`]: the household's page on the LAN (add or remove a device, get its config) and
//!   the figures the provider reads through the gateway.

pub mod page;
pub mod peers;
pub mod tunnel;
