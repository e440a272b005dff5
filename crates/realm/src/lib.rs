//! The three realms and the credentials that stand for them: who is calling (`Principal`),
//! how a token is made and kept (only its SHA-256), and how a client certificate is pinned.
//!
//! Shared by the gateway agent, the HTTP server pieces and the fleet controller; no I/O but
//! the kernel's random source, no HTTP.

use std::io::Read;

use sha2::{Digest, Sha256};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The ISP or community admins: root of the gateway, never a reader of provider data.
    Operator,
    /// A service provider, a tenant: sees and manages its own services only.
    Provider(String),
    /// The household, on the LAN.
    Home,
    /// A gateway enrolled with the fleet controller (by its certificate): it speaks for
    /// itself only, and sees no one's services.
    Gateway(String),
}

impl Principal {
    /// How the audit log and messages name the caller: `operator`, `provider:acme`, `home`.
    pub fn label(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::Provider(p) => format!("provider:{p}"),
            Principal::Home => "home".into(),
            Principal::Gateway(id) => format!("gateway:{id}"),
        }
    }

    /// Whether a service of `provider` exists at all for this caller.
    pub fn sees(&self, provider: &str) -> bool {
        match self {
            Principal::Provider(p) => p == provider,
            Principal::Operator | Principal::Home => true,
            Principal::Gateway(_) => false,
        }
    }

    /// The realm's name as tokens store it: `operator`, `provider` or `home`.
    pub fn realm(&self) -> &'static str {
        match self {
            Principal::Operator => "operator",
            Principal::Provider(_) => "provider",
            Principal::Home => "home",
            Principal::Gateway(_) => "gateway",
        }
    }

    /// The principal a stored token row stands for; None for a row that makes no sense
    /// (a provider token without a provider, an unknown realm).
    pub fn from_stored(realm: &str, provider: Option<String>) -> Option<Principal> {
        match (realm, provider) {
            ("operator", _) => Some(Principal::Operator),
            ("home", _) => Some(Principal::Home),
            ("provider", Some(p)) => Some(Principal::Provider(p)),
            _ => None,
        }
    }
}

/// A credential that could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The kernel's random source failed.
    #[error("cannot read /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
    /// The text given as a client certificate holds none.
    #[error("`client_cert` holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// The text given as a client certificate does not parse.
    #[error("`client_cert` is not a PEM certificate: {0}")]
    BadCertificate(String),
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> Result<String, CredentialError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(CredentialError::Random)?;
    Ok(hex::encode(buf))
}

/// A new token: `shg_` and 64 hex digits from the kernel's random source.
pub fn new_token() -> Result<String, CredentialError> {
    Ok(format!("shg_{}", random_hex(32)?))
}

/// What the database keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// How a pinned client certificate is stored beside token hashes: this prefix and the
/// certificate's SHA-256.
pub const CERT_PREFIX: &str = "cert:";

/// SHA-256 (hex) of a certificate's DER bytes.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// SHA-256 (hex) of the first certificate of a PEM text: how a client certificate is pinned.
pub fn cert_fingerprint_pem(pem: &str) -> Result<String, CredentialError> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(CredentialError::NoCertificate)?
        .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
    Ok(cert_fingerprint(&cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("shg_") && a.len() == 68);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn a_provider_sees_only_its_own() {
        let acme = Principal::Provider("acme".into());
        assert!(acme.sees("acme"));
        assert!(!acme.sees("vodco"));
        assert!(Principal::Home.sees("vodco") && Principal::Operator.sees("vodco"));
        assert_eq!(acme.label(), "provider:acme");
    }

    #[test]
    fn stored_rows_map_back_to_principals() {
        assert_eq!(
            Principal::from_stored("provider", Some("acme".into())),
            Some(Principal::Provider("acme".into()))
        );
        assert_eq!(Principal::from_stored("provider", None), None);
        assert_eq!(Principal::from_stored("root", None), None);
    }

    #[test]
    fn text_without_a_certificate_is_refused() {
        assert!(matches!(
            cert_fingerprint_pem("hello"),
            Err(CredentialError::NoCertificate)
        ));
    }
}
