//! A service's releases and data volume on disk.
//!
//! A release is `services/NAME/releases/HEX`: its layers (each unpacked once into the shared
//! layer store and named in `layers`) and `rootfs/`, their overlay, mounted before each start.
//! Releases are unpacked beside the running one (an install through `tmp/NAME.partial`, an
//! update through `tmp/NAME-HEX.release`), kept for the current version, the previous one and
//! an update's next, and pruned once the record names them no longer; a layer no release
//! names is collected (after a removal, a prune, an install's rollback, and at every start).
//! The layers are unpacked within the budget admitted for them (see [`crate::images`]). The
//! data volume is mounted on `data/` and unmounted before anything under the service's
//! directory is deleted.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use manifest::Manifest;

use crate::images::{sizes_text, Admitted};
use crate::layout::unique;
use crate::{Agent, AgentError};

/// Image layers, each unpacked once and shared by every release that has it.
pub(crate) struct Layers {
    pub(crate) store: image::LayerStore,
    /// Held from unpacking a release's layers until its `layers` file names them, and by the
    /// collection of unreferenced layers.
    pub(crate) lock: Mutex<()>,
}

impl Layers {
    pub(crate) fn new(store: image::LayerStore) -> Layers {
        Layers {
            store,
            lock: Mutex::new(()),
        }
    }
}

impl Agent {
    /// Lays out a release in `release` (created, must not exist): its layers are ensured in
    /// the shared layer store, held to the budget `admitted` by [`Agent::admit_image`], and
    /// named in `release/layers` (what they take in `release/sizes`); `release/rootfs` is
    /// where their overlay is mounted ([`Agent::mount_rootfs`]). The command is checked in a
    /// temporary read-only mount first.
    pub(crate) fn unpack_release(
        &self,
        manifest: &Manifest,
        package: &image::Package,
        release: &Path,
        admitted: &Admitted,
    ) -> Result<(), AgentError> {
        let rootfs = release.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| AgentError::io(&rootfs, e))?;
        let lowers = {
            let _held = self.layers.lock.lock().unwrap_or_else(|p| p.into_inner());
            let lowers = self
                .layers
                .store
                .ensure_within(package, &admitted.budget)
                .map_err(|e| match e {
                    // More than its headers said, or than was admitted: the same refusal.
                    image::ImageError::OverAllowance { .. } => AgentError::ImageTooLarge {
                        service: manifest.name.clone(),
                        source: e,
                    },
                    e => AgentError::Image(e),
                })?;
            let names: Vec<String> = lowers
                .iter()
                .rev()
                .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            let sizes = release.join("sizes");
            std::fs::write(&sizes, sizes_text(&admitted.sizes))
                .map_err(|e| AgentError::io(&sizes, e))?;
            let list = release.join("layers");
            std::fs::write(&list, names.join("\n") + "\n").map_err(|e| AgentError::io(&list, e))?;
            lowers
        };
        let check = self.layout.tmp().join(format!("check-{}", unique()));
        std::fs::create_dir_all(&check).map_err(|e| AgentError::io(&check, e))?;
        let mounts = &self.host.mounts;
        let checked = mounts
            .mount_overlay(&lowers, &check)
            .map_err(AgentError::from)
            .and_then(|()| check_command(&check, &manifest.run.command[0]));
        let _ = mounts.unmount_root(&check);
        let _ = std::fs::remove_dir(&check);
        checked
    }

    /// Mounts the overlay root of the release `digest` of `name`, unless it is mounted already
    /// or the release was unpacked whole by an older agent.
    pub(crate) fn mount_rootfs(&self, name: &str, digest: &str) -> Result<(), AgentError> {
        let release = self.layout.service(name).release(digest);
        let Ok(list) = std::fs::read_to_string(release.join("layers")) else {
            return Ok(());
        };
        let rootfs = release.join("rootfs");
        if self.host.mounts.is_mounted(&rootfs)? {
            return Ok(());
        }
        // The file lists the top layer first; the overlay wants the base first.
        let lowers: Vec<PathBuf> = list
            .lines()
            .filter(|l| !l.is_empty())
            .rev()
            .map(|hex| self.layers.store.root().join("sha256").join(hex))
            .collect();
        let (upper, work) = (release.join("upper"), release.join("work"));
        for dir in [&upper, &work] {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
        }
        self.host
            .mounts
            .mount_root(&lowers, &upper, &work, &rootfs)?;
        Ok(())
    }

    /// Deletes the layers no release (installed, or being installed or updated) names.
    pub(crate) fn collect_layers(&self) {
        let _held = self.layers.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut lists = Vec::new();
        for base in [self.layout.services(), self.layout.tmp()] {
            for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                let dir = entry.path();
                // A release being unpacked by an update: tmp/NAME-ID.release/layers.
                lists.push(dir.join("layers"));
                let releases = std::fs::read_dir(dir.join("releases"));
                for release in releases.into_iter().flatten().flatten() {
                    lists.push(release.path().join("layers"));
                }
            }
        }
        let mut keep = std::collections::BTreeSet::new();
        for list in lists {
            if let Ok(text) = std::fs::read_to_string(&list) {
                keep.extend(
                    text.lines()
                        .filter(|l| !l.is_empty())
                        .map(|hex| format!("sha256:{hex}")),
                );
            }
        }
        match self.layers.store.gc(&keep) {
            Ok(report) if report.removed > 0 => tracing::info!(
                "removed {} unused image layers ({} bytes)",
                report.removed,
                report.bytes
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot collect unused image layers: {e}"),
        }
    }

    /// Mounts the service's data volume on its data directory unless it is mounted already.
    /// A service installed before volumes existed keeps its plain directory.
    pub(crate) fn mount_volume(&self, name: &str) -> Result<(), AgentError> {
        let sl = self.layout.service(name);
        if !sl.volume().exists() {
            return Ok(());
        }
        self.host.mounts.mount_volume(&sl.volume(), &sl.data())?;
        Ok(())
    }

    /// Unmounts everything under a service's directories, so deleting them never reaches into
    /// a mounted volume.
    pub(crate) fn unmount_volumes(&self, name: &str) -> Result<(), AgentError> {
        for dir in [self.layout.service(name).dir, self.layout.partial(name)] {
            for mount in self.host.mounts.mounts_below(&dir)? {
                self.host.mounts.unmount_volume(&mount)?;
            }
        }
        Ok(())
    }

    /// Unpacks a release into `services/NAME/releases/HEX` (through a partial directory and a
    /// rename), unless it is there already (a release kept for rollback).
    pub(crate) fn prepare_release(
        &self,
        manifest: &manifest::Manifest,
        package: &image::Package,
        admitted: &Admitted,
    ) -> Result<(), AgentError> {
        let sl = self.layout.service(&manifest.name);
        let dest = sl.release(&package.digest);
        if dest.exists() {
            return Ok(());
        }
        let partial = self.layout.tmp().join(format!(
            "{}-{}.release",
            manifest.name,
            crate::layout::release_id(&package.digest)
        ));
        let _ = std::fs::remove_dir_all(&partial);
        if let Err(e) = self.unpack_release(manifest, package, &partial, admitted) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        std::fs::create_dir_all(sl.releases()).map_err(|e| AgentError::io(&sl.releases(), e))?;
        std::fs::rename(&partial, &dest).map_err(|e| AgentError::io(&dest, e))
    }

    /// Deletes the release directories the record no longer names (current, previous and an
    /// update's next are kept).
    pub(crate) fn prune_releases(&self, name: &str) {
        let Ok(Some(rec)) = self.store().find(name) else {
            return;
        };
        let keep: Vec<String> = std::iter::once(rec.image_digest.as_str())
            .chain(rec.previous.iter().map(|p| p.image_digest.as_str()))
            .chain(rec.next.iter().map(|n| n.image_digest.as_str()))
            .map(crate::layout::release_id)
            .collect();
        let releases = self.layout.service(name).releases();
        let Ok(entries) = std::fs::read_dir(&releases) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&id) {
                let _ = self.host.mounts.unmount_root(&entry.path().join("rootfs"));
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(service = %name, "cannot delete release {id}: {e}");
                }
            }
        }
        self.collect_layers();
    }
}

/// Refuses a command that does not exist, or is not executable, inside the image.
/// Symlinks resolve inside `rootfs`, as they will in the container.
fn check_command(rootfs: &Path, command: &str) -> Result<(), AgentError> {
    let missing = |why: &str| {
        AgentError::BadManifest(format!(
            "shg-service.toml: run.command: `{command}` {why} in the image; add it to rootfs/ or fix the path"
        ))
    };
    let resolved =
        resolve_in_root(rootfs, Path::new(command)).ok_or_else(|| missing("does not exist"))?;
    let meta = std::fs::metadata(&resolved).map_err(|_| missing("does not exist"))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(missing("is not an executable file"));
    }
    Ok(())
}

/// Resolves `path` as the container would see it, never leaving `root`.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            parts.pop();
            continue;
        }
        let candidate: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&candidate).ok()?;
                if target.is_absolute() {
                    parts.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => parts.push(part),
            Err(_) => return None,
        }
    }
    Some(root.join(parts.iter().collect::<PathBuf>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"x").unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("bin/escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/bin/sh")),
            Some(root.join("bin/busybox"))
        );
        // `..` past the root stays at the root, as in the container.
        assert_eq!(resolve_in_root(root, Path::new("/bin/escape")), None);
        assert_eq!(resolve_in_root(root, Path::new("/nope")), None);
    }

    #[test]
    fn a_missing_command_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_command(dir.path(), "/bin/httpd").unwrap_err();
        assert!(
            err.to_string()
                .contains("`/bin/httpd` does not exist in the image"),
            "{err}"
        );
    }
}
