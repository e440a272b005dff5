//! Opening an upload: the package verified, and its service manifest read from its label or
//! taken from beside a standard image and completed from the image's own config.

use std::path::Path;

use manifest::Manifest;

use crate::{Agent, AgentError};

/// How errors name a manifest read from the package's label.
const IN_PACKAGE: &str = "shg-service.toml (in the package)";
/// How errors name a manifest given beside the image.
const BESIDE: &str = "shg-service.toml (beside the image)";

impl Agent {
    /// Opens the package at `upload` into `staging` (every digest and size verified) and reads
    /// its service manifest: the `org.shg.manifest` label, or `beside`, the manifest given
    /// with the image, completed from the image's config where its `[run]` leaves a field
    /// out. Nothing in it is trusted yet: the caller checks the signature next, over
    /// [`image::Package::digest`], which covers the manifest as it was given.
    pub(crate) async fn open_package(
        &self,
        upload: &Path,
        staging: &Path,
        beside: Option<&str>,
    ) -> Result<(image::Package, Manifest), AgentError> {
        let (up, st) = (upload.to_path_buf(), staging.to_path_buf());
        let text = beside.map(str::to_string);
        let mut package =
            tokio::task::spawn_blocking(move || image::open_with(&up, &st, text.as_deref()))
                .await
                .map_err(AgentError::Task)?
                .map_err(AgentError::Image)?;
        let origin = match beside {
            None => IN_PACKAGE,
            Some(_) => {
                let defaults = manifest::ImageDefaults::from_image_config(&package.config)
                    .map_err(|e| {
                        AgentError::BadPackage(format!(
                            "image {}: {e}; rebuild the image",
                            package.image_digest
                        ))
                    })?;
                // From here on the package's manifest is the completed one: what the record
                // stores and every start reads, so the image's config is not needed again.
                package.manifest_toml =
                    manifest::complete(&package.manifest_toml, BESIDE, &defaults)
                        .map_err(AgentError::Manifest)?;
                BESIDE
            }
        };
        let manifest =
            manifest::parse(&package.manifest_toml, origin).map_err(AgentError::Manifest)?;
        Ok((package, manifest))
    }
}
