//! Who may publish what: providers' Ed25519 signing keys, package signatures, and the
//! operator's trust policy.
//!
//! A package is identified by the digest of its OCI image manifest (`sha256:…`), which covers
//! its config (and so its `shg-service.toml`) and every layer. A provider signs that digest
//! with its secret key; the signature travels as an annotation `org.shg.signature.KEYID` on the
//! manifest's entry in the package's `index.json` (and, in a registry, as a small artifact
//! beside the image). The gateway installs a package only when a signature verifies under a
//! key the operator trusts for the package's provider and service name ([`check`]).
//!
//! Key files are one line of text, like SSH keys:
//!
//! ```text
//! acme.key   shg-ed25519-secret acme <base64 PKCS#8>     (mode 0600)
//! acme.pub   shg-ed25519 acme <base64 32-byte public key>
//! ```
//!
//! A key's id is the first 16 hex digits of the SHA-256 of its public key.
//!
//! A standard OCI image (one without the `org.shg.manifest` label) installs with its
//! `shg-service.toml` given beside it. The provider then signs the *pair*: the digest signed
//! is `image::pair_digest` of the image manifest's digest and the manifest's, and the
//! signature travels under `org.shg.signature.KEYID.HEX`, HEX being the sha256 of the
//! manifest it was made with ([`Signature::annotation_for`]), so one image may carry
//! signatures for several manifests and a gateway picks those for the one it was given
//! ([`check_annotations`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest as _, Sha256};

/// Prefix of the `index.json` annotations that carry signatures; the key id follows.
pub const ANNOTATION_PREFIX: &str = "org.shg.signature.";

const SECRET_TAG: &str = "shg-ed25519-secret";
const PUBLIC_TAG: &str = "shg-ed25519";
/// What is signed: this domain tag, then the manifest digest.
const SIGNED_PREFIX: &[u8] = b"shg package signature v1\n";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{what} is not an SHG {kind} key ({why}); make one with `shg key gen PROVIDER`")]
    Malformed {
        what: String,
        kind: &'static str,
        why: String,
    },
    #[error("provider name `{0}` cannot name a key: use lowercase letters, digits and '-'")]
    BadProvider(String),
    #[error("the system's random source failed while making a key")]
    Random,
}

/// A provider's secret signing key.
pub struct SecretKey {
    provider: String,
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

/// A provider's public key: what the operator trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub provider: String,
    bytes: Vec<u8>,
}

/// One signature over a package digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The id of the key that made it.
    pub key_id: String,
    pub bytes: Vec<u8>,
}

fn valid_provider(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn signed_message(digest: &str) -> Vec<u8> {
    [SIGNED_PREFIX, digest.as_bytes()].concat()
}

/// Never prints the secret.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("provider", &self.provider)
            .field("id", &self.public().id())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A fresh key for `provider`.
    pub fn generate(provider: &str) -> Result<SecretKey, KeyError> {
        if !valid_provider(provider) {
            return Err(KeyError::BadProvider(provider.into()));
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        Self::from_pkcs8(provider, pkcs8.as_ref().to_vec(), "a new key")
    }

    fn from_pkcs8(provider: &str, pkcs8: Vec<u8>, what: &str) -> Result<SecretKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| KeyError::Malformed {
            what: what.into(),
            kind: "secret",
            why: format!("not an Ed25519 PKCS#8 key: {e}"),
        })?;
        Ok(SecretKey {
            provider: provider.into(),
            pkcs8,
            pair,
        })
    }

    /// Reads the text of a `.key` file; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<SecretKey, KeyError> {
        let (provider, body) = split_line(text, SECRET_TAG, what, "secret")?;
        let pkcs8 = B64.decode(body).map_err(|e| KeyError::Malformed {
            what: what.into(),
            kind: "secret",
            why: format!("bad base64: {e}"),
        })?;
        Self::from_pkcs8(&provider, pkcs8, what)
    }

    /// The text of a `.key` file.
    pub fn to_text(&self) -> String {
        format!(
            "{SECRET_TAG} {} {}\n",
            self.provider,
            B64.encode(&self.pkcs8)
        )
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            provider: self.provider.clone(),
            bytes: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// Signs the package whose image-manifest digest is `digest`.
    pub fn sign(&self, digest: &str) -> Signature {
        Signature {
            key_id: self.public().id(),
            bytes: self.pair.sign(&signed_message(digest)).as_ref().to_vec(),
        }
    }
}

impl PublicKey {
    /// Reads the text of a `.pub` file; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<PublicKey, KeyError> {
        let (provider, body) = split_line(text, PUBLIC_TAG, what, "public")?;
        let bytes = B64.decode(body).map_err(|e| KeyError::Malformed {
            what: what.into(),
            kind: "public",
            why: format!("bad base64: {e}"),
        })?;
        if bytes.len() != 32 {
            return Err(KeyError::Malformed {
                what: what.into(),
                kind: "public",
                why: format!("{} bytes where an Ed25519 key has 32", bytes.len()),
            });
        }
        Ok(PublicKey { provider, bytes })
    }

    /// The text of a `.pub` file.
    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC_TAG} {} {}\n",
            self.provider,
            B64.encode(&self.bytes)
        )
    }

    /// First 16 hex digits of the SHA-256 of the key.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(&self.bytes)[..8])
    }

    /// Whether `sig` is this key's signature over `digest`.
    pub fn verifies(&self, digest: &str, sig: &Signature) -> bool {
        sig.key_id == self.id()
            && UnparsedPublicKey::new(&ED25519, &self.bytes)
                .verify(&signed_message(digest), &sig.bytes)
                .is_ok()
    }
}

fn split_line(
    text: &str,
    tag: &str,
    what: &str,
    kind: &'static str,
) -> Result<(String, String), KeyError> {
    let bad = |why: &str| KeyError::Malformed {
        what: what.into(),
        kind,
        why: why.into(),
    };
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(t), Some(provider), Some(body), None) if t == tag => {
            if !valid_provider(provider) {
                return Err(bad("the provider name is not valid"));
            }
            Ok((provider.into(), body.into()))
        }
        (Some(t), ..) if t == SECRET_TAG || t == PUBLIC_TAG => Err(bad(&format!(
            "it is a {} key",
            if t == SECRET_TAG { "secret" } else { "public" }
        ))),
        _ => Err(bad(&format!("expected one line `{tag} PROVIDER BASE64`"))),
    }
}

impl Signature {
    /// The `index.json` annotation (key, value) that carries it.
    pub fn annotation(&self) -> (String, String) {
        (
            format!("{ANNOTATION_PREFIX}{}", self.key_id),
            B64.encode(&self.bytes),
        )
    }

    /// The annotation that carries it for a package whose service manifest has the digest
    /// `manifest_digest` (`sha256:HEX`) and came beside the image: `org.shg.signature.KEYID.HEX`.
    /// For a package carrying its manifest as a label (`None`), [`Signature::annotation`].
    pub fn annotation_for(&self, manifest_digest: Option<&str>) -> (String, String) {
        let (key, value) = self.annotation();
        match manifest_digest {
            None => (key, value),
            Some(d) => (format!("{key}.{}", d.trim_start_matches("sha256:")), value),
        }
    }

    /// The signature an annotation carries, `None` if the annotation is not one or is
    /// malformed (a malformed signature counts as no signature). Signatures made for a
    /// manifest beside the image are not this kind: see [`check_annotations`].
    pub fn from_annotation(key: &str, value: &str) -> Option<Signature> {
        let key_id = key.strip_prefix(ANNOTATION_PREFIX)?;
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Signature {
            key_id: key_id.to_ascii_lowercase(),
            bytes: B64.decode(value).ok()?,
        })
    }
}

/// The signatures among `annotations` made for the package at hand: for a labelled package
/// (`manifest_digest` `None`) `org.shg.signature.KEYID`; for an image with the manifest
/// `manifest_digest` beside it, `org.shg.signature.KEYID.HEX` of that manifest. Also the ids
/// of keys whose signatures are for the same image with another manifest.
pub fn signatures_for(
    annotations: &std::collections::BTreeMap<String, String>,
    manifest_digest: Option<&str>,
) -> (Vec<Signature>, Vec<String>) {
    let wanted = manifest_digest.map(|d| d.trim_start_matches("sha256:"));
    let mut mine = Vec::new();
    let mut others = Vec::new();
    for (key, value) in annotations {
        let Some(rest) = key.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        let (key_id, for_manifest) = match rest.split_once('.') {
            Some((id, hex)) => (id, Some(hex)),
            None => (rest, None),
        };
        let Some(sig) = Signature::from_annotation(&format!("{ANNOTATION_PREFIX}{key_id}"), value)
        else {
            continue;
        };
        match (wanted, for_manifest) {
            (None, None) => mine.push(sig),
            (Some(w), Some(m)) if w.eq_ignore_ascii_case(m) => mine.push(sig),
            (Some(_), Some(_)) => others.push(sig.key_id),
            // A label's signature says nothing of a manifest beside the image, and a pair's
            // nothing of the label.
            _ => {}
        }
    }
    (mine, others)
}

/// [`check`] with the signatures [`signatures_for`] finds in `annotations`. An image with a
/// manifest beside it that carries signatures only for other manifests is refused as such
/// ([`TrustError::OtherManifest`]): the manifest was changed after signing.
pub fn check_annotations(
    rules: &[Rule],
    service: &str,
    provider: &str,
    digest: &str,
    manifest_digest: Option<&str>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<String, TrustError> {
    let (signatures, others) = signatures_for(annotations, manifest_digest);
    if signatures.is_empty() && manifest_digest.is_some() {
        let (service, provider) = (service.to_string(), provider.to_string());
        return Err(if others.is_empty() {
            TrustError::UnsignedPair { service, provider }
        } else {
            TrustError::OtherManifest {
                service,
                provider,
                key_ids: others,
            }
        });
    }
    check(rules, service, provider, digest, &signatures)
}

/// One rule of the operator's trust policy: a provider's key and the service names it may
/// publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub key: PublicKey,
    /// Patterns of service names (`camera`, `cam-*`); empty means any name.
    pub services: Vec<String>,
}

impl Rule {
    pub fn allows(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|p| pattern_matches(p, service))
    }
}

/// Checks a pattern of service names: letters, digits, '-' and '*' (any run of characters).
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 63
        && pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*')
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            // Let `*` take 0, 1, … characters and match the rest from there.
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| pattern_matches(rest, &tail[i..]))
        }
    }
}

/// Why a package is not trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("package `{service}` of provider `{provider}` is unsigned: this gateway installs only packages signed by a key its operator trusts; sign it with `shg pack DIR --sign {provider}.key` (or `shg sign REFERENCE --key {provider}.key` in a registry), or, for local development only, have the operator install it with `--allow-unsigned`")]
    Unsigned { service: String, provider: String },
    #[error("package `{service}` of provider `{provider}` is an image with its manifest beside it, and no signature covers that pair: this gateway installs only what a key its operator trusts signed; the provider signs the image and this manifest together with `shg sign IMAGE --manifest shg-service.toml --key {provider}.key`, or, for local development only, the operator installs it with `--allow-unsigned`")]
    UnsignedPair { service: String, provider: String },
    #[error("the image of `{service}` is signed by {} with another shg-service.toml, not the one given beside it: the manifest was changed after signing (or belongs to another version), and is refused; install it with the manifest the provider signed, or have provider `{provider}` sign this one with `shg sign IMAGE --manifest shg-service.toml --key {provider}.key`", keys(.key_ids))]
    OtherManifest {
        service: String,
        provider: String,
        key_ids: Vec<String>,
    },
    #[error("the signature of key {key_id} on `{service}` does not match the package {digest}: the package was changed after it was signed, or the signature is forged; it is refused")]
    BadSignature {
        service: String,
        digest: String,
        key_id: String,
    },
    #[error("package `{service}` is signed by {}, which the operator does not trust for provider `{provider}`; the operator adds the provider's key with `shg trust add --provider {provider} {provider}.pub`", keys(.key_ids))]
    Untrusted {
        service: String,
        provider: String,
        key_ids: Vec<String>,
    },
    #[error("key {key_id} of provider `{provider}` may publish only {}, not `{service}`; the operator widens it with `shg trust add --provider {provider} KEY.pub --services ...`", patterns(.services))]
    NameNotAllowed {
        service: String,
        provider: String,
        key_id: String,
        services: Vec<String>,
    },
}

fn keys(ids: &[String]) -> String {
    let list: Vec<String> = ids.iter().map(|i| format!("key {i}")).collect();
    list.join(", ")
}

fn patterns(p: &[String]) -> String {
    let list: Vec<String> = p.iter().map(|i| format!("`{i}`")).collect();
    list.join(", ")
}

/// Checks that some signature on the package `digest` (service `service` of `provider`)
/// verifies under a key `rules` trusts for that provider and name. Returns the key id.
///
/// A signature made by a trusted key that does not verify is refused outright, even when
/// another signature would pass: a package carrying a forged signature is suspect.
pub fn check(
    rules: &[Rule],
    service: &str,
    provider: &str,
    digest: &str,
    signatures: &[Signature],
) -> Result<String, TrustError> {
    if signatures.is_empty() {
        return Err(TrustError::Unsigned {
            service: service.into(),
            provider: provider.into(),
        });
    }
    let mut trusted = None;
    let mut narrow = None;
    for sig in signatures {
        for rule in rules.iter().filter(|r| r.key.id() == sig.key_id) {
            if !rule.key.verifies(digest, sig) {
                return Err(TrustError::BadSignature {
                    service: service.into(),
                    digest: digest.into(),
                    key_id: sig.key_id.clone(),
                });
            }
            if rule.key.provider != provider {
                continue;
            }
            if rule.allows(service) {
                trusted.get_or_insert_with(|| sig.key_id.clone());
            } else {
                narrow.get_or_insert_with(|| (sig.key_id.clone(), rule.services.clone()));
            }
        }
    }
    if let Some(id) = trusted {
        return Ok(id);
    }
    if let Some((key_id, services)) = narrow {
        return Err(TrustError::NameNotAllowed {
            service: service.into(),
            provider: provider.into(),
            key_id,
            services,
        });
    }
    Err(TrustError::Untrusted {
        service: service.into(),
        provider: provider.into(),
        key_ids: signatures.iter().map(|s| s.key_id.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn rule(key: &SecretKey, services: &[&str]) -> Rule {
        Rule {
            key: key.public(),
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let key = SecretKey::generate("acme").unwrap();
        let again = SecretKey::parse(&key.to_text(), "acme.key").unwrap();
        assert_eq!(again.public(), key.public());
        let public = PublicKey::parse(&key.public().to_text(), "acme.pub").unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.provider, "acme");
        assert_eq!(public.id().len(), 16);
    }

    #[test]
    fn malformed_key_files_are_named() {
        let key = SecretKey::generate("acme").unwrap();
        let err = PublicKey::parse(&key.to_text(), "acme.key").unwrap_err();
        assert!(err.to_string().contains("acme.key"), "{err}");
        assert!(err.to_string().contains("it is a secret key"), "{err}");
        let err = SecretKey::parse("hello", "x.key").unwrap_err();
        assert!(err.to_string().contains("shg key gen"), "{err}");
        let err = PublicKey::parse("shg-ed25519 acme AAAA", "x.pub").unwrap_err();
        assert!(err.to_string().contains("3 bytes"), "{err}");
        assert_eq!(
            SecretKey::generate("Acme!").err(),
            Some(KeyError::BadProvider("Acme!".into()))
        );
    }

    #[test]
    fn a_signature_verifies_only_for_its_digest_and_key() {
        let key = SecretKey::generate("acme").unwrap();
        let other = SecretKey::generate("acme").unwrap();
        let sig = key.sign(DIGEST);
        assert!(key.public().verifies(DIGEST, &sig));
        assert!(!key.public().verifies(&DIGEST.replace('0', "1"), &sig));
        assert!(!other.public().verifies(DIGEST, &sig));
        let (k, v) = sig.annotation();
        assert_eq!(Signature::from_annotation(&k, &v), Some(sig));
        assert_eq!(Signature::from_annotation("org.shg.other", &v), None);
        assert_eq!(Signature::from_annotation(&k, "%%%"), None);
    }

    #[test]
    fn a_pair_signature_is_found_only_for_its_own_manifest() {
        let key = SecretKey::generate("acme").unwrap();
        let rules = vec![rule(&key, &[])];
        let m1 = format!("sha256:{}", "1".repeat(64));
        let m2 = format!("sha256:{}", "2".repeat(64));
        // What image::pair_digest would give for the image and each manifest.
        let (pair1, pair2) = (DIGEST.replace('0', "a"), DIGEST.replace('0', "b"));
        let label = key.sign(DIGEST).annotation();
        let sig1 = key.sign(&pair1).annotation_for(Some(&m1));
        assert_eq!(sig1.0, format!("{}.{}", label.0, "1".repeat(64)));
        let annotations: std::collections::BTreeMap<_, _> =
            [label.clone(), sig1.clone()].into_iter().collect();

        // The label's signature is the labelled package's only; the pair's, the pair's only.
        let (mine, others) = signatures_for(&annotations, None);
        assert_eq!((mine.len(), others.len()), (1, 0));
        let id = key.public().id();
        assert_eq!(
            check_annotations(&rules, "cam", "acme", DIGEST, None, &annotations),
            Ok(id.clone())
        );
        assert_eq!(
            check_annotations(&rules, "cam", "acme", &pair1, Some(&m1), &annotations),
            Ok(id.clone())
        );
        // Another manifest beside the same image: refused as such, naming the key.
        let err =
            check_annotations(&rules, "cam", "acme", &pair2, Some(&m2), &annotations).unwrap_err();
        assert!(matches!(err, TrustError::OtherManifest { .. }), "{err}");
        assert!(err.to_string().contains(&id), "{err}");
        assert!(err.to_string().contains("--manifest"), "{err}");
        // No pair signature at all: the sentence says how to sign a pair.
        let only_label: std::collections::BTreeMap<_, _> = [label].into_iter().collect();
        let err =
            check_annotations(&rules, "cam", "acme", &pair1, Some(&m1), &only_label).unwrap_err();
        assert!(matches!(err, TrustError::UnsignedPair { .. }), "{err}");
        assert!(
            err.to_string().contains("shg sign IMAGE --manifest"),
            "{err}"
        );
        // A pair signature moved onto another manifest's key does not verify.
        let moved: std::collections::BTreeMap<_, _> = [(
            format!("{}.{}", key.sign(DIGEST).annotation().0, "2".repeat(64)),
            sig1.1,
        )]
        .into_iter()
        .collect();
        let err = check_annotations(&rules, "cam", "acme", &pair2, Some(&m2), &moved).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn patterns_match_names() {
        assert!(pattern_matches("camera", "camera"));
        assert!(!pattern_matches("camera", "camera2"));
        assert!(pattern_matches("cam-*", "cam-front"));
        assert!(pattern_matches("cam-*", "cam-"));
        assert!(!pattern_matches("cam-*", "camera"));
        assert!(pattern_matches("*-cam", "front-cam"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("*", "anything"));
        assert!(valid_pattern("cam-*"));
        assert!(!valid_pattern("cam,*"));
        assert!(!valid_pattern(""));
    }

    #[test]
    fn the_policy_names_each_refusal() {
        let acme = SecretKey::generate("acme").unwrap();
        let rival = SecretKey::generate("rival").unwrap();
        let rules = vec![rule(&acme, &["camera", "cam-*"]), rule(&rival, &[])];
        let signed = |k: &SecretKey| vec![k.sign(DIGEST)];

        assert_eq!(
            check(&rules, "camera", "acme", DIGEST, &signed(&acme)),
            Ok(acme.public().id())
        );
        assert_eq!(
            check(&rules, "cam-2", "acme", DIGEST, &signed(&acme)),
            Ok(acme.public().id())
        );
        assert!(matches!(
            check(&rules, "camera", "acme", DIGEST, &[]),
            Err(TrustError::Unsigned { .. })
        ));
        // A rival's trusted key cannot publish in acme's name.
        assert!(matches!(
            check(&rules, "camera", "acme", DIGEST, &signed(&rival)),
            Err(TrustError::Untrusted { .. })
        ));
        // A name outside the key's patterns.
        let err = check(&rules, "vod", "acme", DIGEST, &signed(&acme)).unwrap_err();
        assert!(matches!(err, TrustError::NameNotAllowed { .. }));
        assert!(err.to_string().contains("`camera`, `cam-*`"), "{err}");
        // Another digest: the package changed after signing.
        let other = DIGEST.replace('f', "e");
        let err = check(&rules, "camera", "acme", &other, &signed(&acme)).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
        // An unknown key.
        let stranger = SecretKey::generate("acme").unwrap();
        let err = check(&rules, "camera", "acme", DIGEST, &signed(&stranger)).unwrap_err();
        assert!(err.to_string().contains(&stranger.public().id()), "{err}");
        assert!(err.to_string().contains("shg trust add"), "{err}");
    }
}
