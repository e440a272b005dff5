//! The publisher's side: make a catalog (`init`), then publish and remove entries. Each change
//! is a new publication: targets, snapshot and timestamp are signed again with the next version.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root};
use tough::{ExpirationEnforcement, FilesystemTransport, RepositoryLoader, TargetName};

use crate::entry::{self, NewEntry};
use crate::error::PublishError;
use crate::{METADATA_DIR, TARGETS_DIR};

/// The TUF spec version tough writes and accepts.
const SPEC_VERSION: &str = "1.0.0";

/// The four top-level roles, each with one Ed25519 key in `KEYS_DIR/<role>.pk8`.
const ROLES: [(RoleType, &str); 4] = [
    (RoleType::Root, "root"),
    (RoleType::Targets, "targets"),
    (RoleType::Snapshot, "snapshot"),
    (RoleType::Timestamp, "timestamp"),
];

/// Where `role`'s private key lives: an unencrypted PKCS#8 (DER) Ed25519 key, mode 0600.
pub fn key_path(keys_dir: &Path, role: &str) -> PathBuf {
    keys_dir.join(format!("{role}.pk8"))
}

/// Makes a new catalog: one Ed25519 key per role in `keys_dir` (created mode 0700, each file
/// 0600), a signed `metadata/1.root.json` in `repo_dir`, and a first, empty publication
/// (version 1). `expires` applies to the root and to that publication.
///
/// Returns the path of the root metadata: copy it to each gateway as its pinned root.
/// Refuses directories that already hold a root or keys.
pub async fn init(
    repo_dir: &Path,
    keys_dir: &Path,
    expires: SystemTime,
) -> Result<PathBuf, PublishError> {
    let expires = to_timestamp(expires)?;
    let metadata = repo_dir.join(METADATA_DIR);
    let root_path = metadata.join("1.root.json");
    let mut existing = std::iter::once(root_path.clone())
        .chain(ROLES.iter().map(|(_, role)| key_path(keys_dir, role)));
    if let Some(path) = existing.find(|p| p.exists()) {
        return Err(PublishError::AlreadyInitialized { path });
    }

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(keys_dir)
        .map_err(|source| io_error(keys_dir, source))?;
    let rng = SystemRandom::new();
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for (role_type, role) in ROLES {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| PublishError::Tough {
            action: "generate a signing key",
            detail: e.to_string(),
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| PublishError::Tough {
            action: "read back a generated key",
            detail: e.to_string(),
        })?;
        let key = tough::schema::key::Key::Ed25519 {
            keyval: tough::schema::key::Ed25519Key {
                public: pair.public_key().as_ref().to_vec().into(),
                _extra: HashMap::new(),
            },
            scheme: tough::schema::key::Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        };
        let key_id = key.key_id().map_err(|e| PublishError::Tough {
            action: "compute a key id",
            detail: e.to_string(),
        })?;
        write_new_private(&key_path(keys_dir, role), pkcs8.as_ref())?;
        root.keys.insert(key_id.clone(), key);
        root.roles.insert(
            role_type,
            RoleKeys {
                keyids: vec![key_id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
    }

    let holder = KeyHolder::Root(root.clone());
    let signed_root = SignedRole::new(root, &holder, &key_sources(keys_dir, &["root"])?, &rng)
        .await
        .map_err(|e| tough_error("sign root.json", &e))?;
    let targets = repo_dir.join(TARGETS_DIR);
    fs::create_dir_all(&targets).map_err(|source| io_error(&targets, source))?;
    let staging = Staging::new(repo_dir)?;
    signed_root
        .write(staging.path(), true)
        .await
        .map_err(|e| tough_error("write root.json", &e))?;
    staging.commit(&metadata)?;

    let editor = RepositoryEditor::new(&root_path)
        .await
        .map_err(|e| tough_error("read the new root.json", &e))?;
    sign_and_write(editor, repo_dir, keys_dir, NonZeroU64::MIN, expires, &[]).await?;
    Ok(root_path)
}

/// Adds `entries` to the catalog (replacing any entry of the same service and version) and
/// writes the next publication, whose targets, snapshot and timestamp expire at `expires`.
/// Each entry's image manifest is written to `repo_dir/targets/`.
///
/// With no entries, it only renews the expiry, which the catalog needs before each expiry
/// date. Needs the targets, snapshot and timestamp keys; not the root key. Publications of one
/// repository must not run concurrently. Returns the new publication's version.
pub async fn publish(
    repo_dir: &Path,
    keys_dir: &Path,
    entries: &[NewEntry],
    expires: SystemTime,
) -> Result<u64, PublishError> {
    let mut seen = HashSet::new();
    for new in entries {
        validate(new)?;
        if !seen.insert((&new.provider, &new.service, &new.version)) {
            return Err(PublishError::Duplicate {
                provider: new.provider.clone(),
                service: new.service.clone(),
                version: new.version.clone(),
            });
        }
    }
    let expires = to_timestamp(expires)?;
    let (mut editor, version) = open_current(repo_dir).await?;
    for new in entries {
        editor
            .add_target(
                entry::target_name(&new.provider, &new.service, &new.version),
                entry::to_target(new),
            )
            .map_err(|e| tough_error("add a target", &e))?;
    }
    sign_and_write(editor, repo_dir, keys_dir, version, expires, entries).await?;
    Ok(version.get())
}

/// Removes `provider`'s `service` `version` from the catalog and writes the next publication, which
/// expires at `expires`. The target file stays, since older publications still name it.
/// Returns the new publication's version.
pub async fn remove(
    repo_dir: &Path,
    keys_dir: &Path,
    provider: &str,
    service: &str,
    version: &str,
    expires: SystemTime,
) -> Result<u64, PublishError> {
    let expires = to_timestamp(expires)?;
    let not_listed = || PublishError::NotListed {
        provider: provider.into(),
        service: service.into(),
        version: version.into(),
    };
    let name = TargetName::new(entry::target_name(provider, service, version))
        .map_err(|_| not_listed())?;
    let repo = load_own(repo_dir).await?;
    if !repo.targets().signed.targets.contains_key(&name) {
        return Err(not_listed());
    }
    let (mut editor, next) = editor_for(repo_dir, repo).await?;
    editor
        .remove_target(&name)
        .map_err(|e| tough_error("remove a target", &e))?;
    sign_and_write(editor, repo_dir, keys_dir, next, expires, &[]).await?;
    Ok(next.get())
}

/// Checks every field of `new` against its rule.
fn validate(new: &NewEntry) -> Result<(), PublishError> {
    let checks = [
        ("service", &new.service, entry::name_problem(&new.service)),
        (
            "version",
            &new.version,
            entry::version_problem(&new.version),
        ),
        (
            "provider",
            &new.provider,
            entry::name_problem(&new.provider),
        ),
    ];
    let reference = new
        .reference
        .as_ref()
        .map(|r| ("reference", r, entry::reference_problem(r)));
    if let Some((field, value, Some(problem))) = checks
        .into_iter()
        .chain(reference)
        .find(|(_, _, p)| p.is_some())
    {
        return Err(PublishError::BadField {
            field,
            value: value.clone(),
            problem,
        });
    }
    match serde_json::from_slice::<serde_json::Value>(&new.manifest_json) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(bad_manifest(new, "it is JSON but not an object".into())),
        Err(e) => Err(bad_manifest(new, e.to_string())),
    }
}

fn bad_manifest(new: &NewEntry, detail: String) -> PublishError {
    PublishError::BadManifest {
        service: new.service.clone(),
        version: new.version.clone(),
        detail,
    }
}

/// The repository as last published, read and verified by tough, and an editor for the next
/// publication.
async fn open_current(repo_dir: &Path) -> Result<(RepositoryEditor, NonZeroU64), PublishError> {
    let repo = load_own(repo_dir).await?;
    editor_for(repo_dir, repo).await
}

/// Loads the publisher's own repository. Expiry is not enforced: publishing again is how
/// expired metadata gets fresh.
async fn load_own(repo_dir: &Path) -> Result<tough::Repository, PublishError> {
    let metadata = repo_dir.join(METADATA_DIR);
    let root_path = metadata.join("1.root.json");
    let root = fs::read(&root_path).map_err(|_| PublishError::NotInitialized {
        path: repo_dir.to_path_buf(),
    })?;
    let targets = repo_dir.join(TARGETS_DIR);
    fs::create_dir_all(&targets).map_err(|source| io_error(&targets, source))?;
    RepositoryLoader::new(&root, dir_url(&metadata)?, dir_url(&targets)?)
        .transport(FilesystemTransport)
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .map_err(|e| tough_error("read the current publication", &e))
}

/// An editor holding `repo`'s targets, and the next publication's version.
async fn editor_for(
    repo_dir: &Path,
    repo: tough::Repository,
) -> Result<(RepositoryEditor, NonZeroU64), PublishError> {
    let current = [
        repo.timestamp().signed.version,
        repo.snapshot().signed.version,
        repo.targets().signed.version,
    ]
    .into_iter()
    .max()
    .unwrap_or(NonZeroU64::MIN);
    let next = current.checked_add(1).ok_or(PublishError::Tough {
        action: "number the next publication",
        detail: "the version counter is exhausted".into(),
    })?;
    let root_path = repo_dir
        .join(METADATA_DIR)
        .join(format!("{}.root.json", repo.root().signed.version));
    let editor = RepositoryEditor::from_repo(&root_path, repo)
        .await
        .map_err(|e| tough_error("start the next publication", &e))?;
    Ok((editor, next))
}

/// Signs the publication in `editor` as `version` and makes it visible: target files first,
/// then targets and snapshot metadata, `timestamp.json` last, each by an atomic rename, so a
/// reader never sees a timestamp whose files are not in place.
async fn sign_and_write(
    mut editor: RepositoryEditor,
    repo_dir: &Path,
    keys_dir: &Path,
    version: NonZeroU64,
    expires: jiff::Timestamp,
    entries: &[NewEntry],
) -> Result<(), PublishError> {
    let keys = key_sources(keys_dir, &["targets", "snapshot", "timestamp"])?;
    editor
        .targets_version(version)
        .map_err(|e| tough_error("set the targets version", &e))?
        .targets_expires(expires)
        .map_err(|e| tough_error("set the targets expiry", &e))?;
    editor
        .snapshot_version(version)
        .snapshot_expires(expires)
        .timestamp_version(version)
        .timestamp_expires(expires);
    let signed = editor
        .sign(&keys)
        .await
        .map_err(|e| tough_error("sign the publication", &e))?;

    let targets = repo_dir.join(TARGETS_DIR);
    for new in entries {
        write_target(&targets, new)?;
    }
    let staging = Staging::new(repo_dir)?;
    signed
        .write(staging.path())
        .await
        .map_err(|e| tough_error("write the publication", &e))?;
    staging.commit(&repo_dir.join(METADATA_DIR))
}

/// Writes `new`'s image manifest where tough looks for it with consistent snapshots:
/// `targets/HEX.PROVIDER/SERVICE/VERSION`. The name carries the hash, so an existing file with the right
/// content is left alone.
fn write_target(targets: &Path, new: &NewEntry) -> Result<(), PublishError> {
    let digest = entry::digest_of(&new.manifest_json);
    let hex = digest.trim_start_matches("sha256:");
    let dir = targets.join(format!("{hex}.{}/{}", new.provider, new.service));
    let path = dir.join(&new.version);
    if fs::read(&path).is_ok_and(|existing| existing == new.manifest_json) {
        return Ok(());
    }
    fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
    let mut file =
        tempfile::NamedTempFile::new_in(&dir).map_err(|source| io_error(&dir, source))?;
    file.write_all(&new.manifest_json)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|source| io_error(&path, source))?;
    file.persist(&path).map_err(|e| io_error(&path, e.error))?;
    Ok(())
}

/// A directory beside `metadata/` where tough writes a publication before it is renamed into
/// place.
struct Staging(tempfile::TempDir);

impl Staging {
    fn new(repo_dir: &Path) -> Result<Self, PublishError> {
        fs::create_dir_all(repo_dir).map_err(|source| io_error(repo_dir, source))?;
        tempfile::Builder::new()
            .prefix(".publishing-")
            .tempdir_in(repo_dir)
            .map(Staging)
            .map_err(|source| io_error(repo_dir, source))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Moves the staged files into `metadata`: versioned files first, `timestamp.json` last.
    /// A root file that is already there is kept (it is the same signed document).
    fn commit(self, metadata: &Path) -> Result<(), PublishError> {
        fs::create_dir_all(metadata).map_err(|source| io_error(metadata, source))?;
        let mut names = Vec::new();
        for dirent in fs::read_dir(self.path()).map_err(|source| io_error(self.path(), source))? {
            let dirent = dirent.map_err(|source| io_error(self.path(), source))?;
            names.push(dirent.file_name());
        }
        names.sort_by_key(|name| name == "timestamp.json");
        for name in names {
            let from = self.path().join(&name);
            let to = metadata.join(&name);
            if name.to_string_lossy().ends_with(".root.json") && to.exists() {
                continue;
            }
            fs::File::open(&from)
                .and_then(|f| f.sync_all())
                .map_err(|source| io_error(&from, source))?;
            fs::rename(&from, &to).map_err(|source| io_error(&to, source))?;
        }
        fs::File::open(metadata)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error(metadata, source))
    }
}

/// tough key sources for `roles`, each checked to exist so a missing key is named.
fn key_sources(
    keys_dir: &Path,
    roles: &[&'static str],
) -> Result<Vec<Box<dyn KeySource>>, PublishError> {
    roles
        .iter()
        .map(|role| {
            let path = key_path(keys_dir, role);
            if path.is_file() {
                Ok(Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
            } else {
                Err(PublishError::KeyMissing { role, path })
            }
        })
        .collect()
}

/// Creates `path` with mode 0600 and writes `bytes`; refuses to replace an existing file.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error(path, source))
}

/// TUF expiry times are whole seconds here, so the signed text is the same however it is read.
fn to_timestamp(time: SystemTime) -> Result<jiff::Timestamp, PublishError> {
    let timestamp = jiff::Timestamp::try_from(time).map_err(|_| PublishError::BadExpiry(time))?;
    jiff::Timestamp::from_second(timestamp.as_second()).map_err(|_| PublishError::BadExpiry(time))
}

/// A `file://` URL for a directory, which must exist.
pub(crate) fn dir_url(dir: &Path) -> Result<url::Url, PublishError> {
    let absolute = fs::canonicalize(dir).map_err(|source| io_error(dir, source))?;
    url::Url::from_directory_path(&absolute).map_err(|()| {
        io_error(
            dir,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an absolute path"),
        )
    })
}

fn io_error(path: &Path, source: std::io::Error) -> PublishError {
    PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tough_error(action: &'static str, error: &tough::error::Error) -> PublishError {
    PublishError::Tough {
        action,
        detail: error.to_string(),
    }
}
