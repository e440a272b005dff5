//! Where the agent keeps things inside its state directory.
//!
//! ```text
//! STATE/
//!   api.sock            the API (HTTP/1.1 over a Unix socket, mode 0600)
//!   agent.lock          held while an agent runs on this directory
//!   state.db            SQLite (WAL): services and the event journal
//!   shg-init            every container's PID 1, bound read-only at its /.shg/init; written
//!                       by the agent as it starts (`runtime::init::install`)
//!   containers/         libcontainer's state, one directory per container: a tmpfs of its
//!                       own while the agent runs, left mounted while containers run
//!   tmp/                uploads and half-done installs
//!   cgroup-view/        empty directories, one per cgroup v1 hierarchy a service sees:
//!                       bound read-only at its /sys/fs/cgroup, its own cgroups bound on them
//!   layers/             the layer store: sha256/HEX is one image layer, unpacked once for
//!                       every release that has it (see `image::LayerStore`)
//!   services/NAME/
//!     releases/HEX/     one per kept release (HEX: 16 hex digits of its image digest):
//!       layers          the release's layer directories, top first, one HEX a line
//!       sizes           what its layers take unpacked, from their tar headers: HEX BYTES
//!                       a line (what an image allowance is charged; see `images`)
//!       rootfs/         the release's root: an overlay of those shared layers, mounted
//!                       while the release may run (read-only in the container)
//!       upper/ work/    the overlay's own writable part: only the mount points the
//!                       container runtime makes; the layers are never written
//!                       Releases are kept for the current version, the previous one (for
//!                       rollback) and an update's next one.
//!     rootfs/           the unpacked image of a service installed before releases existed
//!     bundle/config.json  written at every start, for the current release
//!     volume.img        the data volume: a sparse ext4 image, capped at the storage limit
//!     data/             where the volume is loop-mounted; /data in the container
//!     logs/log.0 log.1  the size-capped log the init writes
//!     status            the exit status the init writes
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join(api::SOCKET_NAME)
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("state.db")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn services(&self) -> PathBuf {
        self.root.join("services")
    }

    /// Bound read-only at every v1 service's /sys/fs/cgroup (`runtime::spec`).
    pub fn cgroup_view(&self) -> PathBuf {
        self.root.join("cgroup-view")
    }

    pub fn service(&self, name: &str) -> ServiceLayout {
        ServiceLayout {
            dir: self.services().join(name),
        }
    }

    /// Where an install unpacks before it is renamed into place.
    pub fn partial(&self, name: &str) -> PathBuf {
        self.tmp().join(format!("{name}.partial"))
    }
}

/// The name of a release's directory: the first 16 hex digits of its image digest.
pub fn release_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(16).collect()
}

#[derive(Debug, Clone)]
pub struct ServiceLayout {
    pub dir: PathBuf,
}

impl ServiceLayout {
    pub fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }

    /// Where the release with image digest `digest` lives.
    pub fn release(&self, digest: &str) -> PathBuf {
        self.releases().join(release_id(digest))
    }

    /// The root file system of the release `digest`: in its release directory, or where
    /// an older agent unpacked the only release.
    pub fn rootfs(&self, digest: &str) -> PathBuf {
        let release = self.release(digest).join("rootfs");
        if release.exists() {
            release
        } else {
            self.dir.join("rootfs")
        }
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn volume(&self) -> PathBuf {
        self.dir.join("volume.img")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The service's `hosts` and `resolv.conf`, bound read-only into its /etc.
    pub fn net(&self) -> PathBuf {
        self.dir.join("net")
    }

    pub fn status(&self) -> PathBuf {
        self.dir.join("status")
    }

    /// The FIFO the running init's exit notice comes through (made anew at every start).
    pub fn exit_fifo(&self) -> PathBuf {
        self.dir.join("exit")
    }
}

/// A name for temporary files that no other request uses at the same time.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
