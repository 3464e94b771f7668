//! DKIM: the signing key as people have it, the DNS record to publish for
//! it, and whether the signing domain aligns with the sender's (DMARC).
//!
//! lettre signs, but takes RSA keys only as PKCS#1 PEM and Ed25519 keys
//! only as a base64 seed, while OpenSSL 3 (`openssl genrsa`, `openssl
//! genpkey`) writes PKCS#8. Keys are read here in every usual form and
//! handed to lettre in the one it takes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::HeaderName;
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::der::asn1::OctetStringRef;
use rsa::pkcs8::{EncodePublicKey, LineEnding, ObjectIdentifier, PrivateKeyInfo, SecretDocument};
use rsa::traits::PublicKeyParts;

use super::DeliverError;
use crate::config::{Config, ENV_DKIM_PRIVATE_KEY, sender_domain};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// RFC 8301: verifiers must ignore RSA keys under 1024 bits.
const MIN_RSA_BITS: usize = 1024;

const MAKE_A_KEY: &str = "make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out dkim.pem` (or `-algorithm ed25519`)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl KeyType {
    /// The `k=` tag of the DNS record.
    pub fn tag(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

/// A private key, checked, with its public half.
pub struct DkimKey {
    key_type: KeyType,
    /// What lettre's `DkimSigningKey::new` takes: PKCS#1 PEM or a base64 seed.
    lettre_form: String,
    /// The `p=` of the DNS record, decoded: the SubjectPublicKeyInfo DER
    /// for RSA, the raw 32-byte key for Ed25519 (RFC 8463).
    public_key: Vec<u8>,
}

impl DkimKey {
    /// Reads an RSA key in PKCS#1 or PKCS#8 PEM, an Ed25519 key in PKCS#8
    /// PEM, or a base64 Ed25519 seed. The error completes a sentence that
    /// starts with where the key came from ("dkim.key_file k.pem …").
    pub fn parse(text: &str) -> Result<DkimKey, String> {
        let text = text.trim();
        if !text.contains("-----BEGIN") {
            let seed = B64
                .decode(text)
                .ok()
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
                .ok_or_else(|| {
                    format!("is neither a PEM private key nor a base64 Ed25519 seed (32 bytes): {MAKE_A_KEY}")
                })?;
            return Ok(DkimKey::ed25519(seed));
        }
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY") {
            return Err("is encrypted: write it without a passphrase with `openssl pkey -in KEY -out dkim.pem` and keep that file private".into());
        }
        let (label, der) = SecretDocument::from_pem(text)
            .map_err(|e| format!("is not a readable PEM private key ({e}): {MAKE_A_KEY}"))?;
        match label {
            "RSA PRIVATE KEY" => {
                let key = RsaPrivateKey::from_pkcs1_der(der.as_bytes())
                    .map_err(|e| format!("is not a valid PKCS#1 RSA key ({e})"))?;
                DkimKey::rsa(key)
            }
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::try_from(der.as_bytes())
                    .map_err(|e| format!("is not a valid PKCS#8 private key ({e})"))?;
                match info.algorithm.oid {
                    RSA_ENCRYPTION => DkimKey::rsa(
                        RsaPrivateKey::try_from(info)
                            .map_err(|e| format!("is not a valid PKCS#8 RSA key ({e})"))?,
                    ),
                    ED25519 => {
                        // RFC 8410: the key is an OCTET STRING holding the seed.
                        let seed = OctetStringRef::from_der(info.private_key)
                            .ok()
                            .and_then(|s| <[u8; 32]>::try_from(s.as_bytes()).ok())
                            .ok_or("is not a valid PKCS#8 Ed25519 key (no 32-byte seed)")?;
                        Ok(DkimKey::ed25519(seed))
                    }
                    oid => Err(format!(
                        "holds a key of algorithm {oid} (EC?): DKIM signs with RSA or Ed25519 only; {MAKE_A_KEY}"
                    )),
                }
            }
            other => Err(format!(
                "is a PEM `{other}`, not an RSA or Ed25519 private key: {MAKE_A_KEY}"
            )),
        }
    }

    fn rsa(key: RsaPrivateKey) -> Result<DkimKey, String> {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "is an RSA key of {bits} bits: verifiers ignore keys under {MIN_RSA_BITS} bits; {MAKE_A_KEY}"
            ));
        }
        let pem = key
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| format!("cannot be re-encoded for signing ({e})"))?;
        let public_key = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| format!("has no encodable public key ({e})"))?
            .into_vec();
        Ok(DkimKey {
            key_type: KeyType::Rsa,
            lettre_form: pem.to_string(),
            public_key,
        })
    }

    fn ed25519(seed: [u8; 32]) -> DkimKey {
        let public_key = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes()
            .to_vec();
        DkimKey {
            key_type: KeyType::Ed25519,
            lettre_form: B64.encode(seed),
            public_key,
        }
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The TXT record's value: `v=DKIM1; k=rsa; p=…`.
    pub fn record_value(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.key_type.tag(),
            B64.encode(&self.public_key)
        )
    }

    fn signing_key(&self) -> Result<DkimSigningKey, String> {
        let algorithm = match self.key_type {
            KeyType::Rsa => DkimSigningAlgorithm::Rsa,
            KeyType::Ed25519 => DkimSigningAlgorithm::Ed25519,
        };
        DkimSigningKey::new(&self.lettre_form, algorithm)
            .map_err(|e| format!("does not load ({e})"))
    }
}

/// DKIM as configured: selector, signing domain (A-label) and key.
pub struct DkimSetup {
    pub selector: String,
    pub domain: String,
    pub key: DkimKey,
}

impl DkimSetup {
    /// Reads `[dkim]` (and `TIDINGS_DKIM_PRIVATE_KEY`); `None` when DKIM is
    /// off (no selector). The signing domain defaults to newsletter.from's.
    pub fn from_config(config: &Config) -> Result<Option<DkimSetup>, DeliverError> {
        let d = &config.dkim;
        if !d.enabled() {
            return Ok(None);
        }
        let origin = config
            .origin
            .as_ref()
            .map_or("config".into(), |p| p.display().to_string());
        let err = |m: String| DeliverError::Config(format!("{origin}: {m}"));
        let (key, source) = match (&config.secrets.dkim_private_key, d.key_file.trim()) {
            (Some(k), _) => (k.expose().to_string(), ENV_DKIM_PRIVATE_KEY.to_string()),
            (None, "") => {
                return Err(err(format!(
                    "dkim.selector is set but there is no key: set dkim.key_file or {ENV_DKIM_PRIVATE_KEY}"
                )));
            }
            (None, path) => {
                let path = config.base_dir().join(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(format!("cannot read dkim.key_file {}: {e}", path.display()))
                })?;
                (text, format!("dkim.key_file {}", path.display()))
            }
        };
        // A key from the environment is not the config file's fault: name
        // only the variable.
        let from_env = config.secrets.dkim_private_key.is_some();
        let key_err = |why: String| {
            if from_env {
                DeliverError::Config(format!("{source} {why}"))
            } else {
                err(format!("{source} {why}"))
            }
        };
        let key = DkimKey::parse(&key).map_err(key_err)?;
        key.signing_key().map_err(key_err)?;
        let domain = match d.domain.trim() {
            "" => from_domain(config).ok_or_else(|| {
                err(
                    "dkim.domain is not set and newsletter.from has no domain: set dkim.domain"
                        .into(),
                )
            })?,
            given => ascii_domain(given)
                .ok_or_else(|| err(format!("dkim.domain `{given}` is not a valid domain name")))?,
        };
        Ok(Some(DkimSetup {
            selector: d.selector.trim().to_string(),
            domain,
            key,
        }))
    }

    /// The TXT record's name: `<selector>._domainkey.<domain>`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// lettre's signing configuration.
    pub fn signing_config(&self) -> Result<DkimConfig, DeliverError> {
        let key = self
            .key
            .signing_key()
            .map_err(|why| DeliverError::Config(format!("the DKIM key {why}")))?;
        // lettre signs only From, Subject, To and Date by default; the
        // unsubscribe headers must be covered too, or a relay could alter them.
        // Not Content-Type: lettre writes it with the body, after signing,
        // so it would be named in h= without being hashed, and every
        // verifier would fail the signature (dkimpy did). The body hash
        // still covers the parts. A Reply-To named but absent is hashed as
        // empty on both sides, and so cannot be added later.
        let headers = [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Reply-To",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "List-Id",
            "MIME-Version",
        ]
        .into_iter()
        .map(HeaderName::new_from_ascii_str)
        .collect();
        Ok(DkimConfig::new(
            self.selector.clone(),
            self.domain.clone(),
            key,
            headers,
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        ))
    }
}

/// newsletter.from's domain as an A-label, lower-case.
pub fn from_domain(config: &Config) -> Option<String> {
    sender_domain(&config.newsletter.from).and_then(ascii_domain)
}

fn ascii_domain(domain: &str) -> Option<String> {
    let domain = domain.trim().trim_end_matches('.');
    idna::domain_to_ascii_strict(domain)
        .ok()
        .filter(|d| !d.is_empty())
}

/// How the DKIM signing domain (d=) relates to the From domain, in DMARC's
/// relaxed mode, where both must share the organisational domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alignment {
    /// The same domain.
    Same,
    /// One is a subdomain of the other: aligned.
    Subdomain,
    /// Siblings under this parent: aligned if the parent is the
    /// organisational domain (the one registered), which needs the public
    /// suffix list to know.
    SharedParent(String),
    /// Nothing in common: DMARC will not count the signature.
    None,
}

/// Both domains as A-labels.
pub fn alignment(signing: &str, from: &str) -> Alignment {
    let (s, f) = (signing.to_ascii_lowercase(), from.to_ascii_lowercase());
    if s == f {
        return Alignment::Same;
    }
    if f.ends_with(&format!(".{s}")) || s.ends_with(&format!(".{f}")) {
        return Alignment::Subdomain;
    }
    // The longest common suffix of whole labels, if it has at least two.
    let (sl, fl): (Vec<&str>, Vec<&str>) = (s.rsplit('.').collect(), f.rsplit('.').collect());
    let common = sl.iter().zip(&fl).take_while(|(a, b)| a == b).count();
    if common >= 2 {
        let parent: Vec<&str> = sl[..common].iter().rev().copied().collect();
        return Alignment::SharedParent(parent.join("."));
    }
    Alignment::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_cases() {
        assert_eq!(alignment("example.org", "Example.ORG"), Alignment::Same);
        assert_eq!(
            alignment("example.org", "news.example.org"),
            Alignment::Subdomain
        );
        assert_eq!(
            alignment("mail.example.org", "example.org"),
            Alignment::Subdomain
        );
        assert_eq!(
            alignment("mail.example.org", "news.example.org"),
            Alignment::SharedParent("example.org".into())
        );
        assert_eq!(alignment("example.net", "example.org"), Alignment::None);
        // A suffix of the text is not a parent domain.
        assert_eq!(alignment("ample.org", "example.org"), Alignment::None);
    }

    #[test]
    fn a_seed_gives_the_raw_public_key() {
        // RFC 8032, test 1: this seed's public key.
        let seed = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
        let key = DkimKey::parse(seed).unwrap();
        assert_eq!(key.key_type(), KeyType::Ed25519);
        assert_eq!(
            key.record_value(),
            "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        // The same key in PKCS#8, as `openssl genpkey -algorithm ed25519` writes it.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMRESc\
                   VpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            DkimKey::parse(pem).unwrap().record_value(),
            key.record_value()
        );
    }

    #[test]
    fn keys_that_cannot_sign_are_explained() {
        for (text, expect) in [
            (
                "not a key",
                "neither a PEM private key nor a base64 Ed25519 seed",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "openssl pkey -in KEY -out dkim.pem",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "is not a readable PEM private key",
            ),
            (
                // DER, but only SEQUENCE { INTEGER 0 }.
                "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n",
                "is not a valid PKCS#8 private key",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
                "is a PEM `CERTIFICATE`",
            ),
        ] {
            let err = DkimKey::parse(text).err().unwrap();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
