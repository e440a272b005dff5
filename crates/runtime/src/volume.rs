//! Size-capped data volumes: an ext4 filesystem in a sparse image file, loop-mounted on the
//! service's data directory, so a service that fills its volume gets ENOSPC at its cap and
//! nobody else notices.
//!
//! The image is sparse: it takes host disk only as the service writes. Admission keeps the
//! sum of storage reservations under the gateway's storage capacity; bursting above a
//! reservation (up to the limit, which is the image's size) uses free host space, as any thin
//! provisioning does.

use command::Runner;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// The smallest volume made: ext4 with a journal needs a few MiB of its own.
pub const MIN_SIZE: u64 = 16 << 20;

/// The size of the image for a storage reservation and limit: the limit if one is set, else
/// the reservation, never below [`MIN_SIZE`].
pub fn size_for(reserve: u64, limit: Option<u64>) -> u64 {
    limit.unwrap_or(reserve).max(MIN_SIZE)
}

/// Makes a sparse image of `size` bytes at `image` holding an empty ext4 filesystem whose root
/// directory belongs to `uid:gid`. No blocks are reserved for root: the cap is the cap.
pub fn create(image: &Path, size: u64, uid: u32, gid: u32) -> Result<(), RuntimeError> {
    create_with(&command::System, image, size, uid, gid)
}

/// [`create`], with `mkfs.ext4` run by `runner`.
pub fn create_with(
    runner: &dyn Runner,
    image: &Path,
    size: u64,
    uid: u32,
    gid: u32,
) -> Result<(), RuntimeError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|e| RuntimeError::io(image, e))?;
    file.set_len(size).map_err(|e| RuntimeError::io(image, e))?;
    drop(file);
    // Little overhead, so the service can use nearly all of its cap: no blocks kept for
    // root, no room kept for growing the filesystem, a journal of 1/64 of the size (1 to
    // 64 MiB), one inode per 16 KiB.
    let journal = format!("size={}", (size >> 26).clamp(1, 64));
    let owner = format!("root_owner={uid}:{gid},nodiscard");
    let path = image.to_string_lossy();
    let args = [
        "-q",
        "-F",
        "-m",
        "0",
        "-L",
        "shg-data",
        "-i",
        "16384",
        "-O",
        "^resize_inode",
        "-J",
        &journal,
        "-E",
        &owner,
        &path,
    ];
    runner
        .run("mkfs.ext4", &args, None)
        .map_err(|e| RuntimeError::Volume {
            path: image.to_path_buf(),
            reason: format!("mkfs.ext4 failed: {}; is e2fsprogs installed?", e.reason()),
        })?;
    Ok(())
}

/// Mounts `image` on `target` through a loop device (released again on unmount). Does nothing
/// when something is already mounted there.
pub fn mount(image: &Path, target: &Path) -> Result<(), RuntimeError> {
    mount_with(&command::System, image, target)
}

/// [`mount`], with `mount` run by `runner`.
pub fn mount_with(runner: &dyn Runner, image: &Path, target: &Path) -> Result<(), RuntimeError> {
    if is_mounted(target)? {
        return Ok(());
    }
    let (from, to) = (image.to_string_lossy(), target.to_string_lossy());
    let args = ["-t", "ext4", "-o", "loop,nosuid,nodev,noatime", &from, &to];
    runner
        .run("mount", &args, None)
        .map_err(|e| RuntimeError::Volume {
            path: image.to_path_buf(),
            reason: format!("cannot mount on {}: {}", target.display(), e.reason()),
        })?;
    // mkfs leaves a lost+found the service has no use for; fsck recreates it when needed.
    let _ = std::fs::remove_dir(target.join("lost+found"));
    Ok(())
}

/// Unmounts whatever is mounted on `target` (and so detaches its loop device); nothing to do
/// when nothing is.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    while is_mounted(target)? {
        nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(|e| {
            RuntimeError::Volume {
                path: target.to_path_buf(),
                reason: format!("cannot unmount: {e}; is a process still using it?"),
            }
        })?;
    }
    Ok(())
}

/// Whether `target` is a mount point in this process's mount namespace: its mount is not its
/// parent's (from the mount table on kernels before 5.8, comparing `target` as written).
pub fn is_mounted(target: &Path) -> Result<bool, RuntimeError> {
    // A mount point sits in another mount than its parent: two statx calls, where reading
    // the mount table costs a line per mount (two per service on a gateway) at every start.
    match (mount_id(target), mount_id(&target.join(".."))) {
        (Ok(Some(own)), Ok(Some(parent))) => return Ok(own != parent),
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        (Err(e), _) | (_, Err(e)) => return Err(RuntimeError::io(target, e)),
        // A kernel without mount ids in statx (before 5.8): ask the mount table.
        _ => {}
    }
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| RuntimeError::io(info, e))?;
    let mounted = mount_points(&text).any(|p| p == target);
    Ok(mounted)
}

/// The id of the mount `path` (followed if a symlink) is on; `None` when the kernel does not
/// say.
fn mount_id(path: &Path) -> std::io::Result<Option<u64>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statx is plain old data; zeroed is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statx buffer we own, both live across the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id))
}

/// Every mount point at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| RuntimeError::io(info, e))?;
    let mut found: Vec<PathBuf> = mount_points(&text).filter(|p| p.starts_with(dir)).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Bytes used and total on the filesystem mounted at `target`.
pub fn usage(target: &Path) -> Result<(u64, u64), RuntimeError> {
    let s = nix::sys::statvfs::statvfs(target).map_err(|e| RuntimeError::io(target, e.into()))?;
    let block = s.fragment_size();
    let total = s.blocks() * block;
    Ok((total.saturating_sub(s.blocks_free() * block), total))
}

/// The mount points listed in a `/proc/PID/mountinfo` text (field 5, octal escapes undone).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape(escaped)))
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /var/lib/shg/services/a/data rw - ext4 /dev/loop0 rw\n";
        let points: Vec<PathBuf> = mount_points(text).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/mnt two"),
                PathBuf::from("/var/lib/shg/services/a/data")
            ]
        );
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn the_volume_is_an_ext4_image_owned_by_the_service_user() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("volume.img");
        let fake = command::Recorder::new();
        create_with(&fake, &image, 256 << 20, 1000, 100).unwrap();
        assert_eq!(
            std::fs::metadata(&image).unwrap().len(),
            256 << 20,
            "sparse, full size"
        );
        assert_eq!(
            fake.lines(),
            [format!(
                "mkfs.ext4 -q -F -m 0 -L shg-data -i 16384 -O ^resize_inode -J size=4 -E root_owner=1000:100,nodiscard {}",
                image.display()
            )]
        );
        // An image is made once: a second one at the same path is refused, not overwritten.
        assert!(create_with(&fake, &image, MIN_SIZE, 0, 0).is_err());
    }

    #[test]
    fn a_failed_mkfs_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let fake = command::Recorder::new();
        fake.fail("mkfs.ext4", "mkfs.ext4: not found");
        let err = create_with(&fake, &dir.path().join("v.img"), MIN_SIZE, 0, 0).unwrap_err();
        let text = err.to_string();
        assert!(
            text.ends_with("mkfs.ext4 failed: mkfs.ext4: not found; is e2fsprogs installed?"),
            "{text}"
        );
    }

    #[test]
    fn a_volume_is_loop_mounted_without_devices_or_set_id_files() {
        let dir = tempfile::tempdir().unwrap();
        let (image, target) = (dir.path().join("v.img"), dir.path().join("data"));
        std::fs::create_dir_all(target.join("lost+found")).unwrap();
        let fake = command::Recorder::new();
        mount_with(&fake, &image, &target).unwrap();
        assert_eq!(
            fake.lines(),
            [format!(
                "mount -t ext4 -o loop,nosuid,nodev,noatime {} {}",
                image.display(),
                target.display()
            )]
        );
        assert!(!target.join("lost+found").exists());
    }

    #[test]
    fn size_follows_limit_then_reservation() {
        assert_eq!(size_for(100 << 20, Some(200 << 20)), 200 << 20);
        assert_eq!(size_for(100 << 20, None), 100 << 20);
        assert_eq!(size_for(0, None), MIN_SIZE);
    }

    /// A real volume: mounted, capped, unmounted. Needs root, mkfs.ext4 and loop devices.
    #[test]
    fn a_volume_stops_writes_at_its_size() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for loop mounts");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (image, target) = (dir.path().join("v.img"), dir.path().join("data"));
        std::fs::create_dir(&target).unwrap();
        create(&image, MIN_SIZE, 1000, 1000).unwrap();
        mount(&image, &target).unwrap();
        let guard = Unmount(target.clone());
        assert!(is_mounted(&target).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 1000);

        let mut file = std::fs::File::create(target.join("fill")).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0u64;
        let err = loop {
            match std::io::Write::write_all(&mut file, &chunk).and_then(|_| file.sync_all()) {
                Ok(()) => written += chunk.len() as u64,
                Err(e) => break e,
            }
            assert!(written <= MIN_SIZE, "wrote past the volume's size");
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        let (used, total) = usage(&target).unwrap();
        assert!(used > 0 && used <= total && total <= MIN_SIZE);
        assert!(
            written >= MIN_SIZE * 17 / 20,
            "the filesystem's own overhead stays small: {written} of {MIN_SIZE}"
        );
        drop(file);
        drop(guard);
        assert!(!is_mounted(&target).unwrap());
    }

    /// A bind mount within one filesystem is a mount point too (same device as its parent,
    /// another mount); a plain or missing directory is not.
    #[test]
    fn a_bind_mount_on_the_same_filesystem_is_a_mount_point() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        std::fs::create_dir(&source).unwrap();
        std::fs::create_dir(&target).unwrap();
        assert!(!is_mounted(&target).unwrap());
        assert!(!is_mounted(&dir.path().join("missing")).unwrap());
        nix::mount::mount(
            Some(&source),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let guard = Unmount(target.clone());
        assert!(is_mounted(&target).unwrap());
        assert!(!is_mounted(&source).unwrap());
        drop(guard);
        assert!(!is_mounted(&target).unwrap());
    }

    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount(&self.0);
        }
    }
}
