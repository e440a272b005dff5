//! Frozen metadata: a server (or an attacker between it and the gateway) keeps serving
//! metadata past its expiry, so the gateway never learns of newer publications.

use std::time::{Duration, SystemTime};

use catalog::CatalogError;

use crate::common::{digest, entry, in_a_year, manifest, refused, Fixture};

#[tokio::test]
async fn expired_metadata_is_refused_on_load_and_by_a_catalog_loaded_before() {
    let f = Fixture::new().await;
    let camera = manifest("camera 1.0");
    let expires = SystemTime::now() + Duration::from_secs(2);
    catalog::publish(
        &f.repo,
        &f.keys,
        &[entry("camera", "1.0", "acme", camera.clone())],
        expires,
    )
    .await
    .unwrap();

    let catalog = f.load().await.unwrap();
    catalog
        .admit("acme", "camera", "1.0", &digest(&camera))
        .unwrap();
    assert!(catalog.expires() <= expires);

    // Wait past the expiry (whole seconds in the metadata).
    tokio::time::sleep(Duration::from_millis(3100)).await;

    let stale = catalog
        .admit("acme", "camera", "1.0", &digest(&camera))
        .unwrap_err();
    assert!(matches!(stale, CatalogError::Expired { .. }), "{stale:?}");

    let error = refused(f.load().await);
    match &error {
        CatalogError::Expired { role, expired_at } => {
            assert_eq!(role, "timestamp", "tough checks the timestamp first");
            assert!(expired_at.is_some(), "the message says when");
        }
        other => panic!("expected an expiry refusal, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.starts_with("catalog timestamp metadata expired at 20"),
        "{message}"
    );
    assert!(
        message.ends_with("(frozen metadata): the catalog server must publish fresh metadata"),
        "{message}"
    );

    // A fresh publication thaws the catalog.
    catalog::publish(&f.repo, &f.keys, &[], in_a_year())
        .await
        .unwrap();
    f.load()
        .await
        .unwrap()
        .admit("acme", "camera", "1.0", &digest(&camera))
        .unwrap();
}

#[tokio::test]
async fn a_publication_that_is_already_expired_is_refused() {
    let f = Fixture::new().await;
    let yesterday = SystemTime::now() - Duration::from_secs(24 * 3600);
    catalog::publish(
        &f.repo,
        &f.keys,
        &[entry("camera", "1.0", "acme", manifest("camera"))],
        yesterday,
    )
    .await
    .unwrap();
    let error = refused(f.load().await);
    assert!(matches!(error, CatalogError::Expired { .. }), "{error:?}");
}
