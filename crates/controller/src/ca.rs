//! The controller's certificate authority: made on first start, it signs the controller's
//! own TLS certificate (server use only) and every enrolled gateway's (client use only, named
//! by the gateway id the controller gave it, whatever the request asked for).
//!
//! Enrollment tokens carry the CA's SHA-256 beside their secret, so a gateway that has never
//! met the controller can tell the real one from an impostor on its first connection (as
//! `kubeadm join` pins the cluster CA's hash).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::ControllerError;

/// The CA, loaded: its certificate as distributed, and what signs with it.
pub struct Authority {
    /// PEM of the CA certificate, as gateways pin it.
    pub ca_pem: String,
    /// SHA-256 (hex) of the CA certificate's DER: what enrollment tokens carry.
    pub fingerprint: String,
    issuer: rcgen::Certificate,
    key: KeyPair,
}

fn cert_error(what: &str, e: rcgen::Error) -> ControllerError {
    ControllerError::Internal(format!("{what}: {e}"))
}

impl Authority {
    /// The fleet's CA, kept in the database so that every controller process signs with the
    /// same one; made by whichever process finds none (the others then read it).
    pub async fn open(db: &crate::Db) -> Result<Authority, ControllerError> {
        let read = || async {
            db.fetch_optional(sqlx::query("SELECT cert, key FROM ca WHERE id = 1"))
                .await
                .map(|r| r.map(|r| (crate::db::str_of(&r, "cert"), crate::db::str_of(&r, "key"))))
        };
        let (ca_pem, key_pem) = match read().await? {
            Some(found) => found,
            None => {
                let key = KeyPair::generate().map_err(|e| cert_error("making the CA key", e))?;
                let mut params = CertificateParams::new(Vec::<String>::new())
                    .map_err(|e| cert_error("the CA's parameters", e))?;
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.distinguished_name = name("SHG fleet CA");
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| cert_error("signing the CA", e))?;
                db.execute(
                    sqlx::query("INSERT INTO ca (id, cert, key) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING")
                        .bind(cert.pem())
                        .bind(key.serialize_pem()),
                )
                .await?;
                read()
                    .await?
                    .ok_or_else(|| ControllerError::Internal("the CA vanished".into()))?
            }
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| cert_error("the CA key", e))?;
        // The issuer as rcgen signs with it: same subject and key as the stored certificate.
        let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)
            .map_err(|e| cert_error("the CA certificate", e))?
            .self_signed(&key)
            .map_err(|e| cert_error("the CA certificate", e))?;
        let fingerprint = realm::cert_fingerprint_pem(&ca_pem)
            .map_err(|e| ControllerError::Internal(format!("the CA certificate: {e}")))?;
        Ok(Authority {
            ca_pem,
            fingerprint,
            issuer,
            key,
        })
    }

    /// Writes the CA certificate (not its key) to `path`, for clients to trust.
    pub fn write_ca(&self, path: &Path) -> Result<(), ControllerError> {
        std::fs::write(path, &self.ca_pem).map_err(|e| ControllerError::io(path, e))
    }

    /// The controller's TLS certificate chain and key under `dir` (`cert.pem`, `key.pem`),
    /// signed by the CA for `names` (host names and addresses), made anew at every start so
    /// that a changed address is covered.
    pub fn server_cert(
        &self,
        dir: &Path,
        names: &[String],
    ) -> Result<(PathBuf, PathBuf), ControllerError> {
        std::fs::create_dir_all(dir).map_err(|e| ControllerError::io(dir, e))?;
        let key = KeyPair::generate().map_err(|e| cert_error("making the TLS key", e))?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| cert_error("the controller's names", e))?;
        params.distinguished_name = name("SHG fleet controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| cert_error("signing the controller's certificate", e))?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        server::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        // The chain: the leaf, then the CA, so a gateway enrolling can find the CA it pinned.
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca_pem))
            .map_err(|e| ControllerError::io(&cert_path, e))?;
        Ok((cert_path, key_path))
    }

    /// Signs a gateway's certificate request: the subject is `gateway_id` whatever the
    /// request says, for client authentication only, valid from now for `validity`. Returns
    /// the certificate's PEM and its SHA-256, the gateway's credential from now on.
    pub fn sign_gateway(
        &self,
        csr_pem: &str,
        gateway_id: &str,
        validity: std::time::Duration,
    ) -> Result<(String, String), ControllerError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            ControllerError::BadRequest(format!(
                "`csr` is not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----): {e}"
            ))
        })?;
        csr.params.distinguished_name = name(gateway_id);
        csr.params.subject_alt_names = Vec::new();
        csr.params.is_ca = IsCa::NoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now;
        csr.params.not_after = now + validity;
        let cert = csr
            .signed_by(&self.issuer, &self.key)
            .map_err(|e| cert_error("signing the gateway's certificate", e))?;
        let fingerprint = realm::cert_fingerprint(cert.der());
        Ok((cert.pem(), fingerprint))
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// The names the controller's certificate carries: the loopback names, the host name, and
/// the listening address (every local address when it listens on all of them).
pub fn local_names(listen: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = nix::unistd::gethostname() {
        names.push(host.to_string_lossy().into_owned());
    }
    if listen.is_unspecified() {
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let Some(addr) = a.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    names.push(v4.ip().to_string());
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    if !v6.ip().is_unicast_link_local() {
                        names.push(v6.ip().to_string());
                    }
                }
            }
        }
    } else {
        names.push(listen.to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// An enrollment token (`api::fleet::enroll_token`).
pub use api::fleet::{enroll_token, parse_enroll_token};

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gateway_certificate_names_the_gateway_and_serves_clients_only() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let db = crate::Db::open(&url).await.unwrap();
        let ca = Authority::open(&db).await.unwrap();
        // The same CA comes back from the database.
        let again = Authority::open(&db).await.unwrap();
        assert_eq!(ca.fingerprint, again.fingerprint);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.distinguished_name = name("the-controller-itself");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let (pem, fp) = again.sign_gateway(&csr, "gw-0001", day).unwrap();
        assert_eq!(realm::cert_fingerprint_pem(&pem).unwrap(), fp);
        let parsed = CertificateParams::from_ca_cert_pem(&pem).unwrap();
        let cn = parsed
            .distinguished_name
            .get(&DnType::CommonName)
            .cloned()
            .unwrap();
        assert!(
            matches!(cn, rcgen::DnValue::Utf8String(ref s) if s == "gw-0001"),
            "{cn:?}"
        );
        assert!(parsed.subject_alt_names.is_empty());
        let lifetime = parsed.not_after - parsed.not_before;
        assert_eq!(lifetime.whole_seconds(), 86_400, "valid for the day asked");
        assert_eq!(
            parsed.extended_key_usages,
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        );
        assert!(again.sign_gateway("not a csr", "gw", day).is_err());
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_no_token() {
        let (s, f) = ("a".repeat(64), "b".repeat(64));
        let token = enroll_token(&s, &f);
        assert_eq!(parse_enroll_token(&token), Some((s.as_str(), f.as_str())));
        for bad in [
            "",
            "shgjoin",
            "shgjoin.abc.def",
            &format!("other.{s}.{f}"),
            &format!("{token}.x"),
        ] {
            assert_eq!(parse_enroll_token(bad), None, "{bad}");
        }
    }
}
