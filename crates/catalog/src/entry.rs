//! Catalog entries: how a package becomes a TUF target (`PROVIDER/NAME/VERSION`, the image manifest's
//! bytes, the custom fields) and how a verified target becomes an [`Entry`] again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tough::schema::Target;

/// A package the catalog lists, as the gateway reads it from verified metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Service name (`name` in `shg-service.toml`).
    pub service: String,
    /// Service version (`version` in `shg-service.toml`).
    pub version: String,
    /// Provider the package belongs to; its signature must also vouch for the package.
    pub provider: String,
    /// `sha256:HEX` of the image manifest JSON: the package's identity.
    pub digest: String,
    /// Size of the image manifest JSON in bytes.
    pub length: u64,
    /// Where the image can be pulled from, when the publisher said so.
    pub reference: Option<String>,
}

/// A package to publish: the publisher computes its digest and length from `manifest_json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Service name; the rules of `shg-service.toml` names apply.
    pub service: String,
    /// Service version: letters, digits and `.`, `_`, `+`, `-`, starting with a letter or digit.
    pub version: String,
    /// Provider name; the rules of `shg-service.toml` names apply.
    pub provider: String,
    /// Registry reference to pull the image from, if any.
    pub reference: Option<String>,
    /// The image manifest's bytes, exactly as the registry serves them.
    pub manifest_json: Vec<u8>,
}

/// The `custom` object of a catalog target.
#[derive(Debug, Serialize, Deserialize)]
struct Custom {
    service: String,
    version: String,
    provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

/// The TUF target name of a provider's service version: providers may use the same service
/// names without meeting in the catalog.
pub(crate) fn target_name(provider: &str, service: &str, version: &str) -> String {
    format!("{provider}/{service}/{version}")
}

/// `sha256:HEX` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Why `version` cannot be a catalog version, if it cannot. It becomes a path component of the
/// target file, hence no `.`/`..` and no leading punctuation.
pub(crate) fn version_problem(version: &str) -> Option<String> {
    const RULE: &str =
        "use up to 64 letters, digits and '.', '_', '+', '-', starting with a letter or digit";
    let problem = if version.is_empty() {
        "is empty".to_string()
    } else if version.len() > 64 {
        format!("is {} characters long", version.chars().count())
    } else if let Some(c) = version
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_+".contains(*c)))
    {
        format!("contains {c:?}")
    } else if !version.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        "does not start with a letter or digit".to_string()
    } else {
        return None;
    };
    Some(format!("{problem}; {RULE}"))
}

/// Why `name` cannot be a service or provider name, if it cannot.
pub(crate) fn name_problem(name: &str) -> Option<String> {
    (!manifest::valid_name(name)).then(|| {
        "is not a valid name; use up to 63 lowercase letters, digits and '-', \
         starting with a letter and not ending with '-'"
            .to_string()
    })
}

/// Why `reference` cannot be a registry reference, if it cannot.
pub(crate) fn reference_problem(reference: &str) -> Option<String> {
    if reference.is_empty() {
        Some("is empty; leave it out instead".to_string())
    } else if reference.len() > 1024 {
        Some("is longer than 1024 bytes".to_string())
    } else if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        Some("contains a space or a control character".to_string())
    } else {
        None
    }
}

/// The TUF target for `entry`; `entry` is already validated.
pub(crate) fn to_target(entry: &NewEntry) -> Target {
    let custom = Custom {
        service: entry.service.clone(),
        version: entry.version.clone(),
        provider: entry.provider.clone(),
        reference: entry.reference.clone(),
    };
    let custom = match serde_json::to_value(custom) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
        // A struct of strings always serializes to an object.
        _ => HashMap::new(),
    };
    Target {
        length: entry.manifest_json.len() as u64,
        hashes: tough::schema::Hashes {
            sha256: Sha256::digest(&entry.manifest_json).to_vec().into(),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    }
}

/// The entry a verified target stands for, or what is wrong with it. The custom fields must agree
/// with the target's name, so a signed entry cannot say one service in its name and another in
/// its fields.
pub(crate) fn from_target(name: &str, target: &Target) -> Result<Entry, String> {
    let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
    let custom: Custom = serde_json::from_value(custom).map_err(|e| {
        format!("its custom fields are not {{service, version, provider, reference}}: {e}")
    })?;
    if name != target_name(&custom.provider, &custom.service, &custom.version) {
        return Err(format!(
            "its custom fields say `{}/{}` {}, its name says otherwise",
            custom.provider, custom.service, custom.version
        ));
    }
    let checks = [
        ("service", name_problem(&custom.service)),
        ("version", version_problem(&custom.version)),
        ("provider", name_problem(&custom.provider)),
        (
            "reference",
            custom.reference.as_deref().and_then(reference_problem),
        ),
    ];
    if let Some((field, Some(problem))) = checks.into_iter().find(|(_, p)| p.is_some()) {
        return Err(format!("its {field} {problem}"));
    }
    let sha256: &[u8] = target.hashes.sha256.as_ref();
    if sha256.len() != 32 {
        return Err(format!("its sha256 is {} bytes long, not 32", sha256.len()));
    }
    Ok(Entry {
        service: custom.service,
        version: custom.version,
        provider: custom.provider,
        digest: format!("sha256:{}", hex::encode(sha256)),
        length: target.length,
        reference: custom.reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_entry() -> NewEntry {
        NewEntry {
            service: "camera".into(),
            version: "1.2.0".into(),
            provider: "acme".into(),
            reference: Some("registry.example/acme/camera:1.2.0".into()),
            manifest_json: br#"{"schemaVersion":2}"#.to_vec(),
        }
    }

    #[test]
    fn a_target_reads_back_as_the_entry_it_was_made_from() {
        let new = new_entry();
        let entry = from_target("acme/camera/1.2.0", &to_target(&new)).unwrap();
        assert_eq!(entry.service, "camera");
        assert_eq!(entry.version, "1.2.0");
        assert_eq!(entry.provider, "acme");
        assert_eq!(entry.reference, new.reference);
        assert_eq!(entry.digest, digest_of(&new.manifest_json));
        assert_eq!(entry.length, new.manifest_json.len() as u64);
    }

    #[test]
    fn custom_fields_that_contradict_the_name_are_refused() {
        let target = to_target(&new_entry());
        let problem = from_target("acme/vod/1.2.0", &target).unwrap_err();
        assert!(problem.contains("its name says otherwise"), "{problem}");
    }

    #[test]
    fn versions_that_could_escape_a_directory_are_refused() {
        for bad in ["", ".", "..", ".hidden", "1/2", "1 2", &"9".repeat(65)] {
            assert!(version_problem(bad).is_some(), "{bad:?} accepted");
        }
        for good in ["1", "1.2.0", "2.0.0-rc.1+build_7"] {
            assert_eq!(version_problem(good), None, "{good:?} refused");
        }
    }
}
