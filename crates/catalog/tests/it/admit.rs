//! Publish, load, admit; and the arbitrary-package attack: a package the catalog does not list,
//! or a listed name with another digest.

use catalog::{CatalogError, Entry, PublishError};

use crate::common::{digest, entry, manifest, Fixture};

#[tokio::test]
async fn a_published_package_is_admitted_and_its_entry_carries_the_custom_fields() {
    let f = Fixture::new().await;
    let camera = manifest("camera 1.0");
    let mut camera_entry = entry("camera", "1.0", "acme", camera.clone());
    camera_entry.reference = Some("registry.example/acme/camera:1.0".into());
    let version = f
        .publish(&[
            camera_entry,
            entry("vod", "2.1.0", "streamco", manifest("vod")),
        ])
        .await;
    assert_eq!(version, 2, "init is publication 1");

    let catalog = f.load().await.unwrap();
    assert_eq!(catalog.version(), 2);
    let expected = Entry {
        service: "camera".into(),
        version: "1.0".into(),
        provider: "acme".into(),
        digest: digest(&camera),
        length: camera.len() as u64,
        reference: Some("registry.example/acme/camera:1.0".into()),
    };
    let entries = catalog.entries();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0], expected);
    assert_eq!(entries[1].service, "vod");
    assert_eq!(entries[1].provider, "streamco");
    assert_eq!(entries[1].reference, None);
    assert_eq!(
        catalog.find("acme", "camera", "1.0"),
        Some(expected.clone())
    );

    assert_eq!(
        catalog
            .admit("acme", "camera", "1.0", &digest(&camera))
            .unwrap(),
        expected
    );
    assert_eq!(
        catalog.manifest("acme", "camera", "1.0").await.unwrap(),
        camera
    );
}

#[tokio::test]
async fn an_unlisted_service_or_version_is_refused() {
    let f = Fixture::new().await;
    let camera = manifest("camera 1.0");
    f.publish(&[entry("camera", "1.0", "acme", camera.clone())])
        .await;
    let catalog = f.load().await.unwrap();

    for (service, version) in [("camera", "9.9"), ("backdoor", "1.0")] {
        let error = catalog
            .admit("acme", service, version, &digest(&camera))
            .unwrap_err();
        assert!(
            matches!(&error, CatalogError::NotListed { service: s, version: v, .. }
                if s == service && v == version),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "the catalog does not list `acme/{service}` {version} (sha256:"
            )),
            "{message}"
        );
        assert!(
            message.contains("ask the operator to publish it"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_listed_version_with_another_digest_is_refused() {
    let f = Fixture::new().await;
    let camera = manifest("camera 1.0");
    f.publish(&[entry("camera", "1.0", "acme", camera.clone())])
        .await;
    let catalog = f.load().await.unwrap();

    let impostor = digest(&manifest("camera 1.0 with a backdoor"));
    let error = catalog
        .admit("acme", "camera", "1.0", &impostor)
        .unwrap_err();
    match &error {
        CatalogError::DigestMismatch {
            digest: d, listed, ..
        } => {
            assert_eq!(d, &impostor);
            assert_eq!(listed, &digest(&camera));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(error
        .to_string()
        .contains(&format!("as {}, not {impostor}", digest(&camera))));
}

#[tokio::test]
async fn a_republished_version_replaces_the_old_digest() {
    let f = Fixture::new().await;
    let first = manifest("camera 1.0 first build");
    let second = manifest("camera 1.0 second build");
    f.publish(&[entry("camera", "1.0", "acme", first.clone())])
        .await;
    f.publish(&[entry("camera", "1.0", "acme", second.clone())])
        .await;

    let catalog = f.load().await.unwrap();
    assert_eq!(catalog.entries().len(), 1);
    catalog
        .admit("acme", "camera", "1.0", &digest(&second))
        .unwrap();
    assert!(matches!(
        catalog.admit("acme", "camera", "1.0", &digest(&first)),
        Err(CatalogError::DigestMismatch { .. })
    ));
}

#[tokio::test]
async fn a_removed_entry_is_refused_after_the_next_publication() {
    let f = Fixture::new().await;
    let camera = manifest("camera 1.0");
    f.publish(&[
        entry("camera", "1.0", "acme", camera.clone()),
        entry("vod", "1", "streamco", manifest("vod")),
    ])
    .await;
    let version = catalog::remove(
        &f.repo,
        &f.keys,
        "acme",
        "camera",
        "1.0",
        crate::common::in_a_year(),
    )
    .await
    .unwrap();
    assert_eq!(version, 3);

    let catalog = f.load().await.unwrap();
    assert!(matches!(
        catalog.admit("acme", "camera", "1.0", &digest(&camera)),
        Err(CatalogError::NotListed { .. })
    ));
    assert!(catalog.find("streamco", "vod", "1").is_some());

    let again = catalog::remove(
        &f.repo,
        &f.keys,
        "acme",
        "camera",
        "1.0",
        crate::common::in_a_year(),
    )
    .await;
    assert!(
        matches!(again, Err(PublishError::NotListed { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_target_file_that_differs_from_the_catalog_is_not_read() {
    let f = Fixture::new().await;
    let camera = manifest("camera 1.0");
    f.publish(&[entry("camera", "1.0", "acme", camera.clone())])
        .await;
    let hex = digest(&camera).trim_start_matches("sha256:").to_string();
    let file = f.targets().join(format!("{hex}.acme/camera")).join("1.0");
    let mut swapped = manifest("camera 1.0 swapped");
    swapped.truncate(camera.len());
    std::fs::write(&file, &swapped).unwrap();

    let catalog = f.load().await.unwrap();
    let error = catalog.manifest("acme", "camera", "1.0").await.unwrap_err();
    assert!(
        matches!(&error, CatalogError::Target { detail, .. } if detail.contains("differs from what the catalog lists")),
        "{error:?}"
    );
}

#[tokio::test]
async fn publish_refuses_entries_that_break_the_rules() {
    let f = Fixture::new().await;
    let cases = [
        (entry("Camera", "1.0", "acme", manifest("x")), "service"),
        (entry("camera", "..", "acme", manifest("x")), "version"),
        (entry("camera", "1.0", "", manifest("x")), "provider"),
    ];
    for (bad, field) in cases {
        let result = catalog::publish(&f.repo, &f.keys, &[bad], crate::common::in_a_year()).await;
        assert!(
            matches!(&result, Err(PublishError::BadField { field: got, .. }) if *got == field),
            "{result:?}"
        );
    }
    let not_json = entry("camera", "1.0", "acme", b"not json".to_vec());
    let result = catalog::publish(&f.repo, &f.keys, &[not_json], crate::common::in_a_year()).await;
    assert!(
        matches!(result, Err(PublishError::BadManifest { .. })),
        "{result:?}"
    );
    let twice = [
        entry("camera", "1.0", "acme", manifest("a")),
        entry("camera", "1.0", "acme", manifest("b")),
    ];
    let result = catalog::publish(&f.repo, &f.keys, &twice, crate::common::in_a_year()).await;
    assert!(
        matches!(result, Err(PublishError::Duplicate { .. })),
        "{result:?}"
    );

    // Nothing was published by the refused calls.
    assert_eq!(f.load().await.unwrap().version(), 1);
}

#[tokio::test]
async fn init_refuses_an_existing_catalog_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new().await;
    let again = catalog::init(&f.repo, &f.keys, crate::common::in_a_year()).await;
    assert!(
        matches!(again, Err(PublishError::AlreadyInitialized { .. })),
        "{again:?}"
    );
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let mode = std::fs::metadata(catalog::key_path(&f.keys, role))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{role} key");
    }
}

#[tokio::test]
async fn a_gateway_pointed_at_a_directory_without_metadata_says_what_is_missing() {
    let f = Fixture::new().await;
    let empty = f.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let error = crate::common::refused(f.load_metadata(&empty, &f.datastore).await);
    assert!(
        matches!(&error, CatalogError::MetadataMissing { file, dir } if file == "timestamp.json" && dir == &empty),
        "{error:?}"
    );
}

#[tokio::test]
async fn two_providers_list_the_same_service_name_side_by_side() {
    let f = Fixture::new().await;
    let theirs = manifest("acme probe");
    let ours = manifest("rival probe");
    f.publish(&[
        entry("probe", "1.0", "acme", theirs.clone()),
        entry("probe", "1.0", "rival", ours.clone()),
    ])
    .await;
    let catalog = f.load().await.unwrap();
    assert_eq!(catalog.entries().len(), 2);
    catalog
        .admit("acme", "probe", "1.0", &digest(&theirs))
        .unwrap();
    catalog
        .admit("rival", "probe", "1.0", &digest(&ours))
        .unwrap();
    // Each provider's listing admits only its own build.
    assert!(matches!(
        catalog.admit("rival", "probe", "1.0", &digest(&theirs)),
        Err(CatalogError::DigestMismatch { .. })
    ));
    assert_eq!(
        catalog.manifest("rival", "probe", "1.0").await.unwrap(),
        ours
    );
}
