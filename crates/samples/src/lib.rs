//! The sample services SHG ships (camera, meter, thermostat) and the small busybox root
//! filesystems they, the demo and the tests run on; and the papers' services built from this
//! repository (`services/`), packaged from their static binaries.
//!
//! Each sample is a manifest plus a few files, embedded in the binary; its root filesystem is
//! the host's static busybox with its applets linked in, so no download is ever needed. Each
//! service is its manifest (`services/NAME/shg-service.toml`, embedded) and its binary, found
//! where it was built or installed; its root holds that binary and nothing else.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// No static busybox on the host.
    #[error("no static busybox found at {0}; install it with `apt-get install busybox-static`")]
    NoBusybox(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Packing failed.
    #[error("cannot pack sample `{name}`: {reason}")]
    Pack { name: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SampleError + '_ {
    move |source| SampleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One sample service: its manifest and the files it adds to the busybox root.
pub struct Sample {
    pub name: &'static str,
    pub manifest: &'static str,
    /// (path inside the root, contents, mode)
    pub files: &'static [(&'static str, &'static str, u32)],
}

pub const SAMPLES: &[Sample] = &[
    Sample {
        name: "camera",
        manifest: include_str!("../../../samples/camera/shg-service.toml"),
        files: &[(
            "www/index.html",
            include_str!("../../../samples/camera/files/www/index.html"),
            0o644,
        )],
    },
    Sample {
        name: "meter",
        manifest: include_str!("../../../samples/meter/shg-service.toml"),
        files: &[(
            "bin/meter.sh",
            include_str!("../../../samples/meter/files/bin/meter.sh"),
            0o755,
        )],
    },
    Sample {
        name: "thermostat",
        manifest: include_str!("../../../samples/thermostat/shg-service.toml"),
        files: &[(
            "www/index.html",
            include_str!("../../../samples/thermostat/files/www/index.html"),
            0o644,
        )],
    },
];

/// One of the papers' services: a static binary of this repository and its manifest.
pub struct Service {
    /// The service's name (its manifest's).
    pub name: &'static str,
    /// The binary's file name, as cargo builds it.
    pub binary: &'static str,
    pub manifest: &'static str,
}

/// The services the demo hosts and the catalog offers. The cloud proxy is not among them: it
/// needs its provider's cloud, which a demo does not have (its manifest in `services/` is
/// the template a provider fills in).
pub const SERVICES: &[Service] = &[
    Service {
        name: "automation",
        binary: "automation",
        manifest: include_str!("../../../services/home-automation/shg-service.toml"),
    },
    Service {
        name: "surveillance",
        binary: "surveillance",
        manifest: include_str!("../../../services/surveillance/shg-service.toml"),
    },
    Service {
        name: "arcade",
        binary: "arcade",
        manifest: include_str!("../../../services/arcade/shg-service.toml"),
    },
    Service {
        name: "vpn",
        binary: "vpn",
        manifest: include_str!("../../../services/vpn/shg-service.toml"),
    },
];

/// Where the services' binaries are looked for, first found first: `SHG_SERVICES_DIR`, the
/// directory of the running `shg` (cargo puts them side by side), and
/// `/usr/local/lib/shg/services` (where `scripts/demo.sh` installs them).
pub fn service_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("SHG_SERVICES_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.push(PathBuf::from("/usr/local/lib/shg/services"));
    dirs
}

/// The service's binary in the first of `dirs` that holds a static one.
pub fn find_service_binary(service: &Service, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(service.binary))
        .find(|path| is_static_elf(path))
}

/// Builds `service`'s package into `out` (as `NAME.tar`) from `binary`: a root holding the
/// binary as `/bin/BINARY` (stripped of its debug information when `strip` is at hand),
/// `/etc/passwd`, `/etc/group` and the mount points.
pub fn build_service(service: &Service, binary: &Path, out: &Path) -> Result<PathBuf, SampleError> {
    let dir = out.join("src").join(service.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "etc", "data", "tmp", "proc", "sys", "dev"] {
        let path = rootfs.join(sub);
        std::fs::create_dir_all(&path).map_err(io(&path))?;
    }
    let target = rootfs.join("bin").join(service.binary);
    std::fs::copy(binary, &target).map_err(io(&target))?;
    let _ = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg(&target)
        .status();
    write_users(&rootfs)?;
    let manifest_path = dir.join(manifest::FILE_NAME);
    std::fs::write(&manifest_path, service.manifest).map_err(io(&manifest_path))?;
    let tar = out.join(format!("{}.tar", service.name));
    image::pack(&dir, &tar).map_err(|e| SampleError::Pack {
        name: service.name.into(),
        reason: e.to_string(),
    })?;
    Ok(tar)
}

/// `/etc/passwd` and `/etc/group` with root, the `service` user (1000) and nobody.
fn write_users(rootfs: &Path) -> Result<(), SampleError> {
    let files = [
        ("etc/passwd", "root:x:0:0:root:/data:/bin/sh\nservice:x:1000:1000:service:/data:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
        ("etc/group", "root:x:0:\nservice:x:1000:\nnogroup:x:65534:\n"),
    ];
    for (path, text) in files {
        let path = rootfs.join(path);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

/// Where a static busybox is found on Debian (`busybox-static`).
pub fn find_busybox() -> Result<PathBuf, SampleError> {
    let candidates = ["/usr/bin/busybox", "/bin/busybox"];
    for c in candidates {
        let path = Path::new(c);
        if path.exists() && is_static_elf(path) {
            return Ok(path.to_path_buf());
        }
    }
    Err(SampleError::NoBusybox(candidates.join(" or ")))
}

/// True for an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at =
        |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8])) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3
        at + 4 <= bytes.len()
            && u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4])) != 3
    })
}

/// Lays out a minimal root filesystem in `rootfs`: busybox with every applet linked under
/// /bin, /etc/passwd and /etc/group, and the mount points a container needs.
pub fn busybox_rootfs(rootfs: &Path, busybox: &Path) -> Result<(), SampleError> {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    for dir in ["etc", "data", "tmp", "proc", "sys", "dev", "www"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(io(&path))?;
    }
    let target = bin.join("busybox");
    std::fs::copy(busybox, &target).map_err(io(&target))?;
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io(busybox))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = bin.join(applet);
        if applet.is_empty() || applet.contains('/') || link.exists() {
            continue;
        }
        std::os::unix::fs::symlink("busybox", &link).map_err(io(&link))?;
    }
    write_users(rootfs)
}

/// Writes the sample's package source directory (`shg-service.toml` + `rootfs/`) under `work`.
pub fn build_dir(sample: &Sample, work: &Path, busybox: &Path) -> Result<PathBuf, SampleError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = work.join(sample.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, busybox)?;
    for (path, text, mode) in sample.files {
        let path = rootfs.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
            .map_err(io(&path))?;
    }
    let manifest_path = dir.join(manifest::FILE_NAME);
    std::fs::write(&manifest_path, sample.manifest).map_err(io(&manifest_path))?;
    Ok(dir)
}

/// Builds every sample package into `out` (as `NAME.tar`); returns their paths.
pub fn build_all(out: &Path) -> Result<Vec<PathBuf>, SampleError> {
    let busybox = find_busybox()?;
    let work = out.join("src");
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let mut packages = Vec::new();
    for sample in SAMPLES {
        let dir = build_dir(sample, &work, &busybox)?;
        let tar = out.join(format!("{}.tar", sample.name));
        image::pack(&dir, &tar).map_err(|e| SampleError::Pack {
            name: sample.name.into(),
            reason: e.to_string(),
        })?;
        packages.push(tar);
    }
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_manifest_is_valid() {
        for sample in SAMPLES {
            let m = manifest::parse(sample.manifest, sample.name).unwrap();
            assert_eq!(m.name, sample.name);
        }
    }

    #[test]
    fn the_camera_sample_is_the_documented_manifest() {
        let m = manifest::parse(SAMPLES[0].manifest, "camera").unwrap();
        assert_eq!(m.run.command[0], "/bin/httpd");
        assert_eq!(m.resources.memory.limit, Some(64 << 20));
    }

    #[test]
    fn every_service_manifest_is_valid_and_names_its_binary() {
        for service in SERVICES {
            let m = manifest::parse(service.manifest, service.name).unwrap();
            assert_eq!(m.name, service.name);
            assert_eq!(m.run.command[0], format!("/bin/{}", service.binary));
        }
    }

    #[test]
    fn the_cloud_proxy_template_is_a_valid_manifest() {
        let text = include_str!("../../../services/cloud-proxy/shg-service.toml");
        let m = manifest::parse(text, "cloud-proxy").unwrap();
        assert_eq!(
            (m.name.as_str(), m.provider.as_str()),
            ("cloud-proxy", "mailbox")
        );
        assert!(
            !SERVICES.iter().any(|s| s.name == "cloud-proxy"),
            "not in the demo"
        );
    }

    #[test]
    fn the_vod_template_is_a_valid_manifest_that_shares_within_its_reservation() {
        let text = include_str!("../../../services/vod/shg-service.toml");
        let m = manifest::parse(text, "vod").unwrap();
        assert_eq!((m.name.as_str(), m.provider.as_str()), ("vod", "streamco"));
        // The peer's upload cap (bytes/s) is the upload limit (bits/s), which the gateway
        // enforces; the reservation, what it is guaranteed, is at most that.
        let cap = m
            .run
            .command
            .iter()
            .skip_while(|a| *a != "--upload-bps")
            .nth(1);
        let cap: u64 = cap.expect("--upload-bps").parse().unwrap();
        assert_eq!(Some(cap * 8), m.resources.bandwidth_up.limit);
        assert!(m.resources.bandwidth_up.reserve <= cap * 8);
        // Its cache fits its storage reservation.
        let cache = m
            .run
            .command
            .iter()
            .skip_while(|a| *a != "--cache-bytes")
            .nth(1);
        assert!(
            cache.expect("--cache-bytes").parse::<u64>().unwrap() < m.resources.storage.reserve
        );
        assert!(!SERVICES.iter().any(|s| s.name == "vod"), "not in the demo");
    }

    #[test]
    fn host_shell_is_not_static_but_busybox_static_is() {
        assert!(!is_static_elf(Path::new("/bin/ls")));
        if let Ok(bb) = find_busybox() {
            assert!(is_static_elf(&bb));
        }
    }
}
