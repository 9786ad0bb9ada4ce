//! The cluster CA: one ECDSA P-256 key and self-signed certificate, made the first time apid
//! needs it and kept in apid's database (table `ca`, a single row). It signs the node channel's
//! server certificate, the nodes' client certificates and the CRL of revoked ones.
//!
//! One CA serves every cluster of an apid: a node's certificate names its container instance,
//! and the instance names its cluster, so a per-cluster CA would add keys without adding a
//! boundary. The key sits in the database unencrypted: whoever reads the database file can mint
//! node certificates, so the file must stay readable by apid alone (as its access keys' secrets).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, RevokedCertParams,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, CertificateSigningRequestDer, PrivateKeyDer,
    PrivatePkcs8KeyDer,
};
use sqlx::AnyPool;
use time::{Duration, OffsetDateTime};

/// How long the CA's own certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);

/// Errors of the cluster CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The `ca` table could not be read or written.
    #[error("the CA in the database")]
    Store(#[source] sqlx::Error),
    /// The stored CA does not parse (the database was edited or is damaged).
    #[error("the stored CA certificate or key")]
    Stored(#[source] rcgen::Error),
    /// Making a key, a certificate or a CRL failed.
    #[error("{what}")]
    Sign {
        /// What was being made.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// The node's CSR is not PEM.
    #[error("the CSR is not a PEM certificate request: {0}")]
    CsrPem(rustls::pki_types::pem::Error),
    /// The CSR does not parse, or its signature does not verify.
    #[error("the CSR is not valid: {0}")]
    Csr(rcgen::Error),
}

/// A node's certificate, as issued.
#[derive(Clone, Debug)]
pub struct NodeCert {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, lowercase hex (what `container_instances.cert_serial` keeps).
    pub serial: String,
    /// When it expires, epoch seconds.
    pub not_after: f64,
}

/// A node's certificate request whose signature verified.
#[derive(Debug)]
pub struct NodeCsr(CertificateSigningRequestParams);

/// The cluster CA, loaded.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A random positive serial of 16 bytes (RFC 5280: at most 20 octets, unpredictable).
fn random_serial() -> SerialNumber {
    let mut b = hex::decode(crate::ecs::random_id()).expect("random_id is hex");
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn sign_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Sign { what, source }
}

impl Ca {
    /// The CA of `pool`'s database, made now if there is none yet. Two processes racing to make
    /// it agree: the first insert wins and both read it back.
    pub async fn load_or_create(pool: &AnyPool) -> Result<Self, CaError> {
        if let Some(ca) = Self::load(pool).await? {
            return Ok(ca);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err("a CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Skiff apid cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(sign_err("the CA certificate"))?;
        sqlx::query(
            "INSERT INTO ca (id, cert_pem, key_pem) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(cert.pem())
        .bind(key.serialize_pem())
        .execute(pool)
        .await
        .map_err(CaError::Store)?;
        Ok(Self::load(pool)
            .await?
            .expect("the CA row was just written"))
    }

    async fn load(pool: &AnyPool) -> Result<Option<Self>, CaError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT cert_pem, key_pem FROM ca WHERE id = 1")
                .fetch_optional(pool)
                .await
                .map_err(CaError::Store)?;
        let Some((cert_pem, key_pem)) = row else {
            return Ok(None);
        };
        let key = KeyPair::from_pem(&key_pem).map_err(CaError::Stored)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(CaError::Stored)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Stored(rcgen::Error::PemError(e.to_string())))?;
        Ok(Some(Self {
            cert_pem,
            cert_der,
            issuer,
        }))
    }

    /// The CA certificate, PEM: what nodes pin.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER: the root of the node channel's client verifier.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A fresh server certificate and key for the node channel, for `names` (DNS names or IP
    /// addresses), valid for a year. Made at each start, so it follows the configuration.
    pub fn server_cert(
        &self,
        names: &[String],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err("a server key"))?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(sign_err("the server names"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Skiff apid node channel");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(365);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(sign_err("the server certificate"))?;
        Ok((
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        ))
    }

    /// Parses a node's CSR (PEM) and verifies its signature: the node holds the key. Nothing
    /// the CSR asks for is kept but its public key.
    pub fn parse_csr(csr_pem: &str) -> Result<NodeCsr, CaError> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(CaError::CsrPem)?;
        CertificateSigningRequestParams::from_der(&der)
            .map(NodeCsr)
            .map_err(CaError::Csr)
    }

    /// Signs a node's key: the certificate names `instance_id` as its CN, allows client
    /// authentication only, has a random serial, and is valid from now (less 5 minutes of clock
    /// skew) for `validity`.
    pub fn sign_node(
        &self,
        csr: NodeCsr,
        instance_id: &str,
        validity: Duration,
    ) -> Result<NodeCert, CaError> {
        let now = OffsetDateTime::now_utc();
        self.sign_node_key(
            csr.0,
            instance_id,
            now - Duration::minutes(5),
            now + validity,
        )
    }

    fn sign_node_key(
        &self,
        mut csr: CertificateSigningRequestParams,
        instance_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeCert, CaError> {
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, instance_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = not_before;
        params.not_after = not_after;
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(sign_err("the node certificate"))?;
        Ok(NodeCert {
            pem: cert.pem(),
            serial: hex::encode(serial.to_bytes()),
            not_after: not_after.unix_timestamp() as f64,
        })
    }

    /// A CRL revoking `serials` (lowercase hex), valid for a day; the node channel builds one
    /// whenever the set of revoked serials changes.
    pub fn crl(
        &self,
        serials: &[String],
    ) -> Result<CertificateRevocationListDer<'static>, CaError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = serials
            .iter()
            .filter_map(|s| hex::decode(s).ok())
            .map(|b| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&b),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(1),
            crl_number: random_serial(),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(sign_err("the CRL"))?;
        Ok(crl.der().clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use x509_parser::prelude::*;

    use super::*;
    use crate::store::testing::{Guard, store};
    use crate::store::{Backend, Store};

    /// A node key and its CSR, PEM.
    pub(crate) fn node_csr() -> (KeyPair, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "whatever");
        let csr = p.serialize_request(&key).unwrap();
        (key, csr.pem().unwrap())
    }

    /// A node certificate with chosen validity (for expiry tests).
    pub(crate) fn node_cert_between(
        ca: &Ca,
        csr_pem: &str,
        id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> NodeCert {
        let csr = Ca::parse_csr(csr_pem).unwrap();
        ca.sign_node_key(csr.0, id, not_before, not_after).unwrap()
    }

    /// A SQLite store (the CA's queries run on PostgreSQL in the channel's tests too).
    pub(crate) async fn pool() -> (Guard, Store) {
        store(Backend::Sqlite).await.expect("SQLite always runs")
    }

    #[tokio::test]
    async fn the_ca_is_made_once_and_kept() {
        let (_d, store) = pool().await;
        let pool = store.pool();
        let a = Ca::load_or_create(pool).await.unwrap();
        let b = Ca::load_or_create(pool).await.unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        let (_, cert) = X509Certificate::from_der(a.cert_der()).unwrap();
        assert!(cert.is_ca());
        assert_eq!(cert.subject(), cert.issuer());
    }

    #[tokio::test]
    async fn a_node_cert_names_the_instance_allows_client_auth_only_and_has_a_random_serial() {
        let (_d, store) = pool().await;
        let pool = store.pool();
        let ca = Ca::load_or_create(pool).await.unwrap();
        let (key, csr) = node_csr();
        let a = ca
            .sign_node(Ca::parse_csr(&csr).unwrap(), "0123abcd", Duration::days(30))
            .unwrap();
        let b = ca
            .sign_node(Ca::parse_csr(&csr).unwrap(), "0123abcd", Duration::days(30))
            .unwrap();
        assert_ne!(a.serial, b.serial);
        let der = CertificateDer::from_pem_slice(a.pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cn, ["0123abcd"]);
        assert_eq!(hex::encode(cert.raw_serial()), a.serial);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(!cert.is_ca());
        // The node's own key, not one apid made.
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 30);
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn a_csr_that_is_not_one_or_whose_signature_is_wrong_is_refused() {
        let e = Ca::parse_csr("nope").unwrap_err();
        assert!(matches!(e, CaError::CsrPem(_)), "{e}");
        let (_, csr) = node_csr();
        // Change one base64 character of the last body line: the signature's bytes.
        let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
        let last = lines.len() - 2;
        let mut chars: Vec<char> = lines[last].chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        lines[last] = chars.into_iter().collect();
        let text = lines.join("\n");
        let e = Ca::parse_csr(&text).unwrap_err();
        assert!(matches!(e, CaError::Csr(_)), "{e}");
    }
}
