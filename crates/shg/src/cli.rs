//! The command line as clap sees it: every command, argument and flag, with its help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `/var/lib/shg/api.sock`: where `shg gateway run` listens unless given another state dir.
const DEFAULT_GATEWAY: &str = "/var/lib/shg/api.sock";
/// Where `shg controller run` keeps its state unless told otherwise.
pub const DEFAULT_CONTROLLER_DIR: &str = "/var/lib/shg-controller";
/// Its socket.
const DEFAULT_CONTROLLER: &str = "/var/lib/shg-controller/api.sock";

/// Host containerized services from several providers on a home gateway.
#[derive(Debug, Parser)]
#[command(name = "shg", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// The gateway agent's API: the path of its socket, or https://HOST:PORT
    #[arg(
        long,
        global = true,
        env = "SHG_GATEWAY",
        value_name = "PATH|URL",
        default_value = DEFAULT_GATEWAY
    )]
    pub gateway: String,

    /// Token for the gateway's API (needed over https; on the local socket, without one you
    /// act as the operator)
    #[arg(
        long,
        global = true,
        env = "SHG_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// PEM client certificate to present to an https gateway instead of a token
    #[arg(
        long,
        global = true,
        env = "SHG_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// Private key of --client-cert (PEM)
    #[arg(
        long,
        global = true,
        env = "SHG_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Print the answer as JSON (one JSON object per line for streams)
    #[arg(long, global = true)]
    pub json: bool,

    /// PEM certificate to trust for an https gateway (its self-made one is
    /// STATE_DIR/tls/cert.pem)
    #[arg(long, global = true, env = "SHG_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a service package (an OCI image layout tar) from a directory
    ///
    /// DIR holds shg-service.toml and rootfs/. The manifest is checked first; the package is
    /// deterministic, so the same DIR always gives the same digest.
    Pack {
        /// Directory holding shg-service.toml and rootfs/
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Package file to write
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Sign the package with this provider key (from `shg key gen`)
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<PathBuf>,
    },

    /// Publish an app-store catalog as TUF metadata (the operator's or controller's side)
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },

    /// Make and handle provider signing keys
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },

    /// Sign a package file, or an image in an OCI registry (the signature is stored beside it)
    ///
    /// With --manifest, sign a standard image (one built by docker, podman or buildah, without
    /// the org.shg.manifest label) together with the service manifest it installs with: the
    /// signature covers both, so neither can be swapped.
    Sign {
        /// Package or image file, or registry reference (`registry.example:5000/acme/camera:1.2`)
        #[arg(value_name = "FILE|REFERENCE")]
        target: String,
        /// The provider's secret key (from `shg key gen`)
        #[arg(long, value_name = "KEY_FILE")]
        key: PathBuf,
        /// The shg-service.toml the image installs with (`shg install IMAGE --manifest FILE`)
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },

    /// Run the gateway agent
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },

    /// Run the fleet controller
    Controller {
        #[command(subcommand)]
        command: ControllerCommand,
    },

    /// Drive the fleet through its controller: enrollment, inventory, catalog, deployments
    Fleet {
        /// The controller's API: the path of its socket, or https://HOST:PORT
        #[arg(
            long,
            global = true,
            env = "SHG_CONTROLLER",
            value_name = "PATH|URL",
            default_value = DEFAULT_CONTROLLER
        )]
        controller: String,
        #[command(subcommand)]
        command: crate::fleet::FleetCommand,
    },

    /// An emulated ISP on this machine: a controller and gateways in network namespaces
    /// behind shaped access links, with a LAN behind each (needs root)
    Lab {
        /// Where labs keep their state file, logs and the agents' state
        #[arg(long, global = true, value_name = "DIR", default_value = lab::DEFAULT_DIR)]
        dir: PathBuf,
        /// The lab's name (several labs may run side by side)
        #[arg(long, global = true, value_name = "NAME", default_value = lab::DEFAULT_NAME)]
        name: String,
        #[command(subcommand)]
        command: crate::lab::LabCommand,
    },

    #[command(flatten)]
    Remote(RemoteCommand),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Run a gateway agent with a demo service, to try SHG out
    Demo {
        /// Directory for the demo agent's state
        #[arg(long, value_name = "DIR", default_value = api::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Where the demo serves the API over HTTPS too
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
    },
}

/// What to do when a service does not fit.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct MakeRoom {
    /// If it does not fit, offer to stop the lower-priority services the gateway proposes,
    /// and do it once confirmed
    #[arg(long, conflicts_with = "dry_run")]
    pub make_room: bool,
    /// Confirm the proposal without asking (with --make-room)
    #[arg(long, short = 'y', requires = "make_room")]
    pub yes: bool,
}

/// The commands answered by a running agent through its API.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Install a service package on the gateway and start it
    ///
    /// A standard OCI image (built by docker, podman or buildah, without the org.shg.manifest
    /// label) installs with its service manifest given beside it: --manifest FILE.
    Install {
        /// Package file written by `shg pack` (or an OCI image layout tar), or an image in an
        /// OCI registry (`registry.example:5000/acme/camera:1.2`, `…@sha256:HEX`), pulled first
        #[arg(value_name = "FILE|REFERENCE")]
        file: PathBuf,
        /// Install only; start it later with `shg start NAME`
        #[arg(long, conflicts_with = "make_room")]
        no_start: bool,
        /// Only say whether it would be admitted (its reservation fits); change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        room: MakeRoom,
        /// Operator only, for local development: install even though no trusted key signed
        /// the package (`shg ps` flags it UNSIGNED)
        #[arg(long)]
        allow_unsigned: bool,
        /// With a REFERENCE: the gateway pulls the image from the registry itself (into its
        /// own blob cache) instead of this command uploading it
        #[arg(long, conflicts_with_all = ["dry_run", "make_room"])]
        pull_on_gateway: bool,
        /// The service manifest (shg-service.toml) of a standard image, one without the
        /// org.shg.manifest label; the image's config fills in what its [run] leaves out
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },

    /// Update a service to a new version, keeping the current one for a rollback
    ///
    /// The new version is prepared beside the running one, then switched in. If it stops or
    /// fails its health check within the health window, the gateway rolls back by itself.
    /// TARGET is a package file, a registry reference, or a version (a tag of the repository
    /// the service was pulled from); without TARGET, the reference it was installed from is
    /// pulled again.
    Update {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
        /// VERSION, package FILE or registry REFERENCE
        #[arg(value_name = "TARGET")]
        target: Option<String>,
        /// How long the new version must stay up (and healthy) before the update is done,
        /// e.g. `30s`, `2m`
        #[arg(long, value_name = "DURATION")]
        window: Option<String>,
        /// Operator only, for local development: accept a package no trusted key signed
        #[arg(long)]
        allow_unsigned: bool,
        /// The service manifest (shg-service.toml) of a standard image, as for `shg install`
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },

    /// Go back to the version the last update replaced
    Rollback {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// List the installed services and their state
    Ps,

    /// Show a service's output: stdout lines on stdout, stderr lines on stderr
    Logs {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
        /// Keep printing new lines as the service writes them
        #[arg(short, long)]
        follow: bool,
        /// Start with only the last N lines
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Prefix each line with its time (UTC)
        #[arg(long)]
        timestamps: bool,
    },

    /// Show everything about one service, with its recent events
    Inspect {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Run a command inside a running service and exit with its exit code
    Exec {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
        /// Program and arguments, after `--`
        #[arg(value_name = "CMD", required = true, last = true)]
        command: Vec<String>,
    },

    /// Stop a service (it stays stopped until started)
    Stop {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Start a stopped service
    Start {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
        /// Only say whether it would be admitted (its reservation fits); change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        room: MakeRoom,
    },

    /// Show what each service uses against its reservation and limit, and the gateway's totals
    Stats,

    /// Show the gateway's capacity, system reserve, and what is reserved and free
    Capacity,

    /// Stop a service and start it again
    Restart {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Rank a service: 0..=100, higher is more important (default 50). Decides who bursts
    /// first for CPU, whose memory is reclaimed first and who is stopped first
    Priority {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
        /// New priority, 0..=100
        #[arg(value_name = "N", allow_negative_numbers = true)]
        priority: i32,
    },

    /// Let a service reach hosts on the home's LAN (the household's choice; the firewall
    /// keeps every service off the LAN otherwise). Without HOST, shows what it may reach
    #[command(name = "lan")]
    LanAccess {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
        /// The whole list of LAN hosts it may reach, each HOST (every port) or HOST:PORT;
        /// replaces what it had
        #[arg(value_name = "HOST")]
        hosts: Vec<String>,
        /// Close the LAN to it again
        #[arg(long, conflicts_with = "hosts")]
        none: bool,
    },

    /// Stop a service and delete it with its data
    Remove {
        /// Service name
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// List what happened on the gateway, oldest first
    Events {
        /// Only events of this service
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// Keep printing new events as they happen
        #[arg(long, short = 'f')]
        follow: bool,
    },

    /// Print the gateway's Prometheus metrics (what `GET /metrics` serves); with NAME, the
    /// figures that service keeps for its provider (its manifest's `[metrics]` URL, read
    /// inside it by the gateway), for its provider only
    Metrics {
        /// A service whose own figures to print
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },

    /// Manage the API's tokens (operator)
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },

    /// Show the audit log of every change made through the API (operator)
    Audit,

    /// Subscribe the household to a service of the fleet's catalog (a gateway in a fleet)
    Subscribe {
        #[arg(value_name = "NAME")]
        name: String,
        /// The provider, where several publish NAME
        #[arg(long, value_name = "PROVIDER")]
        provider: Option<String>,
    },

    /// Leave a service the household subscribed to; the gateway removes it
    Unsubscribe {
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Show the household's subscriptions, or with --catalog what the fleet's catalog offers
    Subscriptions {
        #[arg(long)]
        catalog: bool,
    },

    /// Manage which provider keys may publish which services (operator)
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a provider's public key (its `.pub` file) to publish its services
    Add {
        /// The provider the key belongs to
        #[arg(long, value_name = "NAME")]
        provider: String,
        /// The provider's public key file (from `shg key gen`)
        #[arg(value_name = "KEY.pub")]
        key: PathBuf,
        /// Only these service names, comma-separated; `*` matches any run of characters
        /// (`camera,cam-*`). Default: any name
        #[arg(long, value_name = "PATTERNS")]
        services: Option<String>,
    },
    /// List the trusted keys
    List,
    /// Stop trusting a key (services it admitted keep running)
    Remove {
        /// The key's id, from `shg trust list`
        #[arg(value_name = "KEY_ID")]
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Make a catalog: role keys in KEYS, a signed root and an empty first publication in REPO
    ///
    /// Copy REPO/metadata/1.root.json to each gateway and name it in its gateway.toml
    /// (`[catalog] root = …`, with `metadata` and `targets`).
    Init {
        /// The catalog repository (metadata/ and targets/ are made in it)
        #[arg(value_name = "REPO")]
        repo: PathBuf,
        /// Where the four role keys are written (keep them apart from the repository)
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// How long the root and first publication stay valid, e.g. `365d`, `12h`
        #[arg(long, value_name = "DURATION", default_value = "365d")]
        expires_in: String,
    },
    /// List packages in the catalog (a new publication; the same service and version replaces
    /// the entry); with no package, renew the expiry
    Publish {
        /// The catalog repository
        #[arg(value_name = "REPO")]
        repo: PathBuf,
        /// The role keys of `shg catalog init`
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// Package files to list
        #[arg(value_name = "PACKAGE")]
        packages: Vec<PathBuf>,
        /// How long this publication stays valid (gateways refuse it afterwards), e.g. `7d`
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        expires_in: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a provider's signing key: writes PROVIDER.key (secret) and PROVIDER.pub
    Gen {
        /// The provider's name
        #[arg(value_name = "PROVIDER")]
        provider: String,
        /// Directory to write the two files in
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it once (it is stored only as a hash)
    Create {
        /// A token for this provider: it sees and manages only its own services
        #[arg(long, value_name = "NAME", group = "realm")]
        provider: Option<String>,
        /// A token for the household: every service, no provider's logs
        #[arg(long, group = "realm")]
        home: bool,
        /// A token for the operator, for remote administration
        #[arg(long, group = "realm")]
        operator: bool,
        /// Register this PEM client certificate instead of making a token: an https client
        /// presenting it (and holding its key) acts for the realm
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
    /// List the tokens (never the tokens themselves)
    List,
    /// Revoke a token: it stops working at once
    Revoke {
        /// The token's id, from `shg token list`
        #[arg(value_name = "ID")]
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Run the gateway agent in the foreground (needs root)
    Run {
        /// Directory for the agent's state, packages, logs and API socket
        #[arg(long, value_name = "DIR", default_value = api::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Also serve the API over HTTPS on this address (callers need a token)
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// PEM certificate chain for --listen (default: one the agent makes for itself)
        #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert
        #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_cert"])]
        tls_key: Option<PathBuf>,
        /// Sync with this fleet controller (https://ADDR:PORT)
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
        /// One-time token from `shg fleet enroll-token`, for the first start with --controller
        #[arg(
            long,
            env = "SHG_ENROLL_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN",
            requires = "controller"
        )]
        enroll_token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ControllerCommand {
    /// Run the fleet controller in the foreground
    Run {
        /// Directory for the controller's state (its CA, database, packages and API socket)
        #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTROLLER_DIR)]
        state_dir: PathBuf,
        /// Serve the API over HTTPS on this address (gateways, providers, remote operators)
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7443")]
        listen: std::net::SocketAddr,
        /// PostgreSQL instead of the embedded SQLite (postgres://USER@HOST/DB), for several
        /// controller processes in front of one database
        #[arg(long, env = "SHG_DATABASE", hide_env_values = true, value_name = "URL")]
        database: Option<String>,
        /// How long a gateway's certificate is valid (e.g. 365d, 12h); gateways renew theirs
        /// when two thirds of it have passed
        #[arg(long, value_name = "SPAN", default_value = "365d")]
        gateway_cert_validity: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_gateway_is_the_default_state_dir_socket() {
        let expected = std::path::Path::new(api::DEFAULT_STATE_DIR).join(api::SOCKET_NAME);
        assert_eq!(std::path::Path::new(DEFAULT_GATEWAY), expected);
    }
}
