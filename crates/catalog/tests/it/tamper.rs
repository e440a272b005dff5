//! Tampered metadata: targets edited after signing (alone, or with the snapshot and timestamp
//! signed again by an attacker holding those online keys), and metadata signed by keys the
//! gateway's pinned root does not name.

use std::fs;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use catalog::CatalogError;
use sha2::Digest;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, Root, Signed, Snapshot, Timestamp};

use crate::common::{digest, entry, manifest, refused, Fixture};

/// Publication 2 lists camera 1.0; returns the fixture and a served copy of its metadata in
/// which `2.targets.json` lists `backdoor`'s digest for camera 1.0 instead.
async fn tampered_targets(backdoor: &[u8]) -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new().await;
    f.publish(&[entry("camera", "1.0", "acme", manifest("camera 1.0"))])
        .await;
    let served = f.copy_metadata("served");
    let path = served.join("2.targets.json");
    let mut targets: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let target = &mut targets["signed"]["targets"]["acme/camera/1.0"];
    target["hashes"]["sha256"] = digest(backdoor).trim_start_matches("sha256:").into();
    target["length"] = backdoor.len().into();
    fs::write(&path, serde_json::to_vec_pretty(&targets).unwrap()).unwrap();
    (f, served)
}

#[tokio::test]
async fn targets_edited_after_signing_are_refused() {
    let backdoor = manifest("camera with a backdoor");
    let (f, served) = tampered_targets(&backdoor).await;

    let error = refused(f.load_metadata(&served, &f.datastore).await);
    // The snapshot pins the hash of the targets file, so the edit is caught before the
    // signature is even checked.
    assert!(
        matches!(&error, CatalogError::MixAndMatch { file, .. } if file == "2.targets.json"),
        "{error:?}"
    );
}

#[tokio::test]
async fn targets_edited_and_listed_again_with_the_online_keys_fail_the_signature_check() {
    let backdoor = manifest("camera with a backdoor");
    let (f, served) = tampered_targets(&backdoor).await;
    // The attacker holds the snapshot and timestamp keys (the online ones), not the targets
    // key: it lists the edited targets file in a re-signed snapshot and timestamp.
    resign_snapshot_and_timestamp(&f, &served).await;

    let error = refused(f.load_metadata(&served, &f.datastore).await);
    match &error {
        CatalogError::BadSignature { file, .. } => assert_eq!(file, "targets.json"),
        other => panic!("expected a signature refusal, got {other:?}"),
    }
    assert!(error
        .to_string()
        .starts_with("signature check failed on targets.json: "));
}

#[tokio::test]
async fn metadata_signed_by_keys_the_pinned_root_does_not_name_is_refused() {
    let f = Fixture::new().await;
    f.publish(&[entry("camera", "1.0", "acme", manifest("camera 1.0"))])
        .await;
    // An attacker's own catalog, made with its own keys, listing its own camera.
    let rogue = Fixture::new().await;
    rogue
        .publish(&[entry("camera", "1.0", "acme", manifest("rogue camera"))])
        .await;

    let error = refused(f.load_metadata(&rogue.metadata(), &f.datastore).await);
    assert!(
        matches!(&error, CatalogError::BadSignature { file, .. } if file == "timestamp.json"),
        "{error:?}"
    );

    // Nor can it slip its root in as the next root version.
    let served = f.copy_metadata("served");
    fs::copy(
        rogue.metadata().join("1.root.json"),
        served.join("2.root.json"),
    )
    .unwrap();
    let error = refused(f.load_metadata(&served, &f.datastore).await);
    assert!(
        matches!(&error, CatalogError::BadSignature { file, .. } if file == "root.json"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_pinned_root_that_does_not_verify_is_refused() {
    let f = Fixture::new().await;
    let mut root: Signed<Root> =
        serde_json::from_slice(&fs::read(&f.pinned_root).unwrap()).unwrap();
    root.signed.consistent_snapshot = false;
    fs::write(&f.pinned_root, serde_json::to_vec(&root).unwrap()).unwrap();
    let error = refused(f.load().await);
    assert!(
        matches!(error, CatalogError::TrustedRoot { .. }),
        "{error:?}"
    );

    fs::write(&f.pinned_root, b"{").unwrap();
    let error = refused(f.load().await);
    assert!(
        matches!(error, CatalogError::TrustedRoot { .. }),
        "{error:?}"
    );
}

/// Signs `served`'s snapshot again so it lists the current `2.targets.json`, and the timestamp
/// so it lists that snapshot, with the catalog's real snapshot and timestamp keys.
async fn resign_snapshot_and_timestamp(f: &Fixture, served: &Path) {
    let rng = SystemRandom::new();
    let root: Signed<Root> = serde_json::from_slice(&fs::read(&f.pinned_root).unwrap()).unwrap();
    let holder = KeyHolder::Root(root.signed);
    let key = |role: &str| -> Vec<Box<dyn KeySource>> {
        vec![Box::new(LocalKeySource {
            path: catalog::key_path(&f.keys, role),
        })]
    };

    let targets = fs::read(served.join("2.targets.json")).unwrap();
    let snapshot_path = served.join("2.snapshot.json");
    let mut snapshot: Signed<Snapshot> =
        serde_json::from_slice(&fs::read(&snapshot_path).unwrap()).unwrap();
    let listed = snapshot.signed.meta.get_mut("targets.json").unwrap();
    listed.length = Some(targets.len() as u64);
    listed.hashes.as_mut().unwrap().sha256 = sha2::Sha256::digest(&targets).to_vec().into();
    let snapshot = SignedRole::new(snapshot.signed, &holder, &key("snapshot"), &rng)
        .await
        .unwrap();
    fs::write(&snapshot_path, snapshot.buffer()).unwrap();

    let timestamp_path = served.join("timestamp.json");
    let mut timestamp: Signed<Timestamp> =
        serde_json::from_slice(&fs::read(&timestamp_path).unwrap()).unwrap();
    let listed = timestamp.signed.meta.get_mut("snapshot.json").unwrap();
    listed.length = Some(*snapshot.length());
    listed.hashes.as_mut().unwrap().sha256 = snapshot.sha256().to_vec().into();
    let timestamp = SignedRole::new(timestamp.signed, &holder, &key("timestamp"), &rng)
        .await
        .unwrap();
    fs::write(&timestamp_path, timestamp.buffer()).unwrap();
}
