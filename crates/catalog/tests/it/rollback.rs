//! Version rollback: a gateway that has seen publication 3 is later served publication 2's
//! (validly signed) metadata, e.g. by a compromised mirror hiding a security fix.

use catalog::CatalogError;

use crate::common::{digest, entry, manifest, refused, Fixture};

#[tokio::test]
async fn older_metadata_than_the_datastore_remembers_is_refused_after_a_restart() {
    let f = Fixture::new().await;
    let vulnerable = manifest("camera 1.0 vulnerable");
    assert_eq!(
        f.publish(&[entry("camera", "1.0", "acme", vulnerable.clone())])
            .await,
        2
    );
    let publication_2 = f.copy_metadata("publication-2");
    assert_eq!(
        f.publish(&[entry("camera", "1.1", "acme", manifest("camera 1.1 fixed"))])
            .await,
        3
    );

    // The gateway loads publication 3; each load is a fresh `Catalog`, as after a restart.
    assert_eq!(f.load().await.unwrap().version(), 3);

    // The server now serves a copy of publication 2.
    let error = refused(f.load_metadata(&publication_2, &f.datastore).await);
    match &error {
        CatalogError::Rollback { role, from, to } => {
            assert_eq!((role.as_str(), *from, *to), ("timestamp", 3, 2));
        }
        other => panic!("expected a rollback refusal, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "catalog timestamp metadata version went back from 3 to 2 (rollback): the gateway never \
         goes back to an older catalog; the catalog server must serve its current publication"
    );

    // The datastore is what remembers: a gateway that never saw publication 3 accepts 2, which
    // is validly signed and not expired.
    let fresh = f.dir.path().join("fresh-datastore");
    let old = f.load_metadata(&publication_2, &fresh).await.unwrap();
    assert_eq!(old.version(), 2);
    old.admit("acme", "camera", "1.0", &digest(&vulnerable))
        .unwrap();

    // And the remembering gateway still accepts the current publication.
    assert_eq!(f.load().await.unwrap().version(), 3);
}
