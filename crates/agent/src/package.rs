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

#[cfg(test)]
mod tests {
    //! Standard images on the fake host: installed and updated with the manifest beside them,
    //! run as their own config says, and signed as a pair.

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use crate::host::fake::Bench;
    use crate::{AgentError, InstallOptions, Principal};

    /// A manifest that leaves `[run]` to the image.
    fn beside(version: &str) -> String {
        format!(
            "name = \"web\"\nversion = \"{version}\"\nprovider = \"acme\"\n\
             [resources]\nmemory = {{ reserve = \"64MiB\" }}\n"
        )
    }

    /// A standard image, as buildah writes one from a `FROM scratch` Containerfile.
    fn standard_image(bench: &Bench) -> PathBuf {
        let root = bench.dir.path().join("image-rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("srv")).unwrap();
        let app = root.join("bin/app");
        std::fs::write(&app, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = serde_json::json!({
            "Entrypoint": ["/bin/app"],
            "Cmd": ["serve", "--port", "8080"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "User": "1000:1000",
            "WorkingDir": "/srv",
            "ExposedPorts": { "8080/tcp": {} },
        });
        let tar = bench.dir.path().join("image.tar");
        image::pack_image(&root, config.as_object().unwrap().clone(), &tar).unwrap();
        tar
    }

    fn with(manifest: &str, allow_unsigned: bool) -> InstallOptions {
        InstallOptions {
            start: true,
            allow_unsigned,
            manifest: Some(manifest.to_string()),
            ..InstallOptions::default()
        }
    }

    fn process(state_dir: &Path) -> serde_json::Value {
        let bundle = state_dir.join("services/web/bundle/config.json");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle).unwrap()).unwrap();
        config["process"].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_standard_image_runs_as_its_own_config_says_where_the_manifest_is_silent() {
        let bench = Bench::new();
        let agent = bench.open();
        let image = standard_image(&bench);

        // Without its manifest it is refused, naming both ways out; nothing is recorded.
        let err = agent
            .install(&Principal::Operator, &image, &InstallOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, AgentError::Image(image::ImageError::Unlabelled { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("--manifest"), "{err}");
        assert!(agent.store().find("web").unwrap().is_none());

        let detail = agent
            .install(&Principal::Operator, &image, &with(&beside("1.0.0"), true))
            .await
            .unwrap();
        assert_eq!(detail.summary.state, "running");
        let process = process(&bench.state_dir());
        let args: Vec<&str> = process["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let command = &args[args.iter().position(|a| *a == "--").unwrap() + 1..];
        assert_eq!(command, ["/bin/app", "serve", "--port", "8080"]);
        let uid = args.iter().position(|a| *a == "--uid").unwrap();
        assert_eq!((args[uid + 1], args[uid + 3]), ("1000", "1000"));
        assert_eq!(process["cwd"], "/srv");
        assert!(
            process["env"]
                .as_array()
                .unwrap()
                .contains(&"GREETING=hello".into()),
            "{process}"
        );
        // What is stored is a whole manifest: every later start reads it alone.
        assert_eq!(detail.manifest["run"]["command"][0], "/bin/app");
        assert_eq!(detail.manifest["ports"][0]["port"], 8080);
        assert_eq!(detail.manifest["ports"][0]["publish"], "none");
        // The release is named by the pair of image and manifest.
        let peek = image::open_with(
            &image,
            &bench.dir.path().join("peek"),
            Some(&beside("1.0.0")),
        )
        .unwrap();
        let of_text = image::manifest_digest(&beside("1.0.0"));
        assert_eq!(
            detail.image_digest,
            image::pair_digest(&peek.image_digest, &of_text)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_signature_covers_the_image_and_its_manifest_together() {
        let bench = Bench::new();
        let agent = bench.open();
        let image = standard_image(&bench);
        let key = trust::SecretKey::generate("acme").unwrap();
        agent
            .add_trust(&api::TrustRequest {
                provider: "acme".into(),
                public_key: key.public().to_text(),
                services: vec![],
            })
            .unwrap();
        let signed = beside("1.0.0");
        let of_signed = image::manifest_digest(&signed);
        image::annotate(&image, |digest| {
            // The image's own digest signed as a labelled package's would be: no use here.
            let label = key.sign(digest).annotation();
            let pair = image::pair_digest(digest, &of_signed);
            let pair = key.sign(&pair).annotation_for(Some(&of_signed));
            [label, pair].into_iter().collect()
        })
        .unwrap();

        // The manifest swapped after signing (more memory, say): refused, even in development.
        let swapped = signed.replace("64MiB", "512MiB");
        for allow_unsigned in [false, true] {
            let err = agent
                .install(
                    &Principal::Operator,
                    &image,
                    &with(&swapped, allow_unsigned),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    AgentError::Signature(trust::TrustError::OtherManifest { .. })
                ),
                "{err}"
            );
            assert!(err.to_string().contains(&key.public().id()), "{err}");
        }
        assert!(agent.store().find("web").unwrap().is_none());

        // The pair as signed installs, and the record names the signer.
        let detail = agent
            .install(&Principal::Operator, &image, &with(&signed, false))
            .await
            .unwrap();
        assert_eq!(detail.summary.signed_by, Some(key.public().id()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_manifest_for_the_same_image_is_an_update() {
        let bench = Bench::new();
        let agent = bench.open();
        let image = standard_image(&bench);
        agent
            .install(&Principal::Operator, &image, &with(&beside("1.0.0"), true))
            .await
            .unwrap();
        let before = agent.store().get("web").unwrap().image_digest;
        let v2 = beside("1.1.0").replace(
            "[resources]",
            "[run]\nenv = { MODE = \"fast\" }\n[resources]",
        );
        let detail = agent
            .update(
                &Principal::Operator,
                "web",
                &image,
                Some(&v2),
                true,
                Duration::from_millis(30),
                None,
            )
            .await
            .unwrap();
        assert_eq!(detail.summary.version, "1.1.0");
        assert_eq!(detail.previous_version.as_deref(), Some("1.0.0"));
        assert_ne!(agent.store().get("web").unwrap().image_digest, before);
        let env = process(&bench.state_dir())["env"].clone();
        let env: Vec<&str> = env
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"MODE=fast") && env.contains(&"GREETING=hello"),
            "{env:?}"
        );
    }
}
