//! Mix-and-match: files of different publications served together, each validly signed on its
//! own, e.g. the current timestamp and snapshot with an older targets list.

use std::fs;

use catalog::CatalogError;

use crate::common::{entry, manifest, refused, Fixture};

/// Publications 2 (camera 1.0) and 3 (camera 1.0 and 1.1), and a copy of publication 2's
/// metadata.
async fn two_publications() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new().await;
    f.publish(&[entry("camera", "1.0", "acme", manifest("camera 1.0"))])
        .await;
    let publication_2 = f.copy_metadata("publication-2");
    f.publish(&[entry("camera", "1.1", "acme", manifest("camera 1.1"))])
        .await;
    (f, publication_2)
}

#[tokio::test]
async fn targets_from_another_publication_are_refused() {
    let (f, publication_2) = two_publications().await;
    let served = f.copy_metadata("served");
    fs::copy(
        publication_2.join("2.targets.json"),
        served.join("3.targets.json"),
    )
    .unwrap();

    let error = refused(f.load_metadata(&served, &f.datastore).await);
    match &error {
        CatalogError::MixAndMatch {
            file, listed_by, ..
        } => {
            assert_eq!(
                (file.as_str(), listed_by.as_str()),
                ("3.targets.json", "snapshot.json")
            );
        }
        other => panic!("expected a mix-and-match refusal, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.starts_with(
            "3.targets.json is not the file snapshot.json lists (mix-and-match or tampering): \
             its sha256 is "
        ),
        "{message}"
    );
}

#[tokio::test]
async fn a_snapshot_from_another_publication_is_refused() {
    let (f, publication_2) = two_publications().await;
    let served = f.copy_metadata("served");
    fs::copy(
        publication_2.join("2.snapshot.json"),
        served.join("3.snapshot.json"),
    )
    .unwrap();

    let error = refused(f.load_metadata(&served, &f.datastore).await);
    assert!(
        matches!(&error, CatalogError::MixAndMatch { file, listed_by, .. }
            if file == "3.snapshot.json" && listed_by == "timestamp.json"),
        "{error:?}"
    );
}
