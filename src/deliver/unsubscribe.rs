//! Signed unsubscribe links: `<base_url>/u/<token>`.
//!
//! A token names the issue and the subscriber: the SHA-256 of the
//! normalised address (the store's key for the person), sealed so that the
//! link carries nothing anyone without `TIDINGS_UNSUBSCRIBE_SECRET` can
//! check a guessed address against (v2, made since issue 15):
//!
//! `v2.<slug>.<base64url(sha256(address) XOR pad)>.<base64url(tag)>`
//!
//! with `tag = HMAC(k_mac, "v2|slug|" + sha256(address))[..16]` and
//! `pad = HMAC(k_enc, "v2|slug|" + tag)` (a synthetic-IV construction: the
//! tag authenticates the hash and picks the pad, so a token is
//! deterministic, another issue's token of the same person looks
//! unrelated, and any change fails). `k_mac` and `k_enc` are HMACs of the
//! secret with fixed labels.
//!
//! Messages sent before carry v1 tokens, which still verify (the links
//! must keep working for years):
//!
//! `v1.<slug>.<base64url(sha256(address))>.<base64url(hmac[..16])>`
//!
//! Those do show the plain hash; nothing can be done about links already
//! in inboxes but to change the secret, which breaks them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::{Config, ENV_UNSUBSCRIBE_SECRET, unsubscribe_secret_problem};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::subscribers::normalise_email;

type HmacSha256 = Hmac<Sha256>;

/// The format of tokens made now; [`V1`] ones are still accepted.
const VERSION: &str = "v2";
const V1: &str = "v1";
/// Truncated MAC length: 128 bits is far beyond guessing over HTTP.
const MAC_LEN: usize = 16;

/// How long the "Subscribe again" button of a page works.
pub const FORM_TOKEN_MINUTES: u64 = 60;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub issue: String,
    /// SHA-256 of the normalised address.
    pub email_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid unsubscribe token")]
pub struct InvalidToken;

#[derive(Clone)]
pub struct Signer {
    /// v1: keyed with the secret itself.
    mac: HmacSha256,
    /// v2: keyed with labelled derivations of the secret.
    seal_mac: HmacSha256,
    seal_pad: HmacSha256,
    base_url: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the normalised address: the subscriber's identity in links
/// and in the suppression list.
pub fn email_hash(email: &str) -> [u8; 32] {
    Sha256::digest(normalise_email(email).as_bytes()).into()
}

/// What the links a command signs are for, which decides how much the
/// unsubscribe secret matters: the one policy for every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A real send: the links must work, so the secret must be set and strong.
    Send,
    /// `tidings serve` checks links: the same.
    Serve,
    /// A dry run: a weak secret is refused (it would be used for real
    /// later), a missing one is replaced by a placeholder with a warning.
    DryRun,
    /// `preview`: links are never meant to work; without a secret, a
    /// placeholder and a warning.
    Preview,
}

impl Signer {
    /// The signer for `purpose` from the configured secret, or the error a
    /// person can act on. Warnings go to `diags`.
    pub fn for_purpose(
        config: &Config,
        purpose: Purpose,
        diags: &mut Diagnostics,
    ) -> Result<Signer, String> {
        let base = &config.newsletter.base_url;
        match (&config.secrets.unsubscribe_secret, purpose) {
            (Some(s), Purpose::Preview) => Ok(Signer::new(s.expose().as_bytes(), base)),
            (Some(s), _) => match unsubscribe_secret_problem(s.expose()) {
                None => Ok(Signer::new(s.expose().as_bytes(), base)),
                Some(problem) if purpose == Purpose::Serve => Err(format!(
                    "{problem} (the same secret `tidings send` signs links with)"
                )),
                Some(problem) => Err(problem),
            },
            (None, Purpose::Send) => Err(format!(
                "{ENV_UNSUBSCRIBE_SECRET} is not set: unsubscribe links must be signed with a secret that `tidings serve` also has; generate one with `openssl rand -hex 32` and export it"
            )),
            (None, Purpose::Serve) => Err(format!(
                "{ENV_UNSUBSCRIBE_SECRET} is not set: `tidings serve` checks unsubscribe links with the secret `tidings send` signed them with; export the same value (generate one with `openssl rand -hex 32`)"
            )),
            (None, Purpose::DryRun) => {
                diags.push(Diagnostic::warning(
                    None,
                    format!("{ENV_UNSUBSCRIBE_SECRET} is not set: the dry run signs unsubscribe links with a placeholder key"),
                ));
                Ok(Signer::new(b"tidings-dry-run-only", base))
            }
            (None, Purpose::Preview) => {
                diags.push(Diagnostic::warning(
                    None,
                    format!("{ENV_UNSUBSCRIBE_SECRET} is not set: unsubscribe links in the preview are signed with a preview-only key and will not work"),
                ));
                Ok(Signer::new(b"tidings-preview-only", base))
            }
        }
    }

    pub fn new(secret: &[u8], base_url: &str) -> Signer {
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
        let derive = |label: &[u8]| {
            let mut m = mac.clone();
            m.update(label);
            HmacSha256::new_from_slice(&m.finalize().into_bytes()).expect("any length")
        };
        Signer {
            seal_mac: derive(b"tidings unsubscribe token v2: mac"),
            seal_pad: derive(b"tidings unsubscribe token v2: pad"),
            mac,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// A key for another use of the same secret (VERP tags, …): the HMAC
    /// of the secret over `label`, as the v2 keys above are made. Each use
    /// has its own label, so no two uses ever share a key.
    pub fn derived_key(&self, label: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(label);
        m.finalize().into_bytes().into()
    }

    /// The v1 MAC (tokens in messages sent before v2).
    fn mac_of(&self, issue: &str, hash_b64: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(V1.as_bytes());
        mac.update(b"|");
        mac.update(issue.as_bytes());
        mac.update(b"|");
        mac.update(hash_b64.as_bytes());
        mac
    }

    fn seal_tag(&self, issue: &str, hash: &[u8; 32]) -> HmacSha256 {
        let mut mac = self.seal_mac.clone();
        mac.update(VERSION.as_bytes());
        mac.update(b"|");
        mac.update(issue.as_bytes());
        mac.update(b"|");
        mac.update(hash);
        mac
    }

    /// The hash XOR this gives the sealed hash, and back.
    fn pad(&self, issue: &str, tag: &[u8]) -> [u8; 32] {
        let mut mac = self.seal_pad.clone();
        mac.update(VERSION.as_bytes());
        mac.update(b"|");
        mac.update(issue.as_bytes());
        mac.update(b"|");
        mac.update(tag);
        mac.finalize().into_bytes().into()
    }

    pub fn token(&self, issue: &str, email: &str) -> String {
        let hash = email_hash(email);
        let tag = self.seal_tag(issue, &hash).finalize().into_bytes();
        let tag = &tag[..MAC_LEN];
        let pad = self.pad(issue, tag);
        let sealed: Vec<u8> = hash.iter().zip(pad).map(|(h, p)| h ^ p).collect();
        format!(
            "{VERSION}.{issue}.{}.{}",
            B64.encode(sealed),
            B64.encode(tag)
        )
    }

    /// The hidden field of the page's "Subscribe again" form for `token`
    /// at `minute` (Unix minutes): `<minute>.<base64url(hmac[..16])>`. It
    /// proves the form came from our page for this very link, recently.
    pub fn form_token(&self, token: &str, minute: u64) -> String {
        let tag = self.form_mac(token, minute).finalize().into_bytes();
        format!("{minute}.{}", B64.encode(&tag[..MAC_LEN]))
    }

    /// Whether `value` is a form token for `token` made in the last
    /// [`FORM_TOKEN_MINUTES`] before `now_minute` (constant time).
    pub fn verify_form_token(&self, token: &str, value: &str, now_minute: u64) -> bool {
        let Some((minute, tag)) = value.split_once('.') else {
            return false;
        };
        let Ok(minute) = minute.parse::<u64>() else {
            return false;
        };
        if minute > now_minute + 1 || now_minute.saturating_sub(minute) > FORM_TOKEN_MINUTES {
            return false;
        }
        let Ok(tag) = B64.decode(tag) else {
            return false;
        };
        tag.len() == MAC_LEN
            && self
                .form_mac(token, minute)
                .verify_truncated_left(&tag)
                .is_ok()
    }

    fn form_mac(&self, token: &str, minute: u64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(b"form|");
        mac.update(token.as_bytes());
        mac.update(b"|");
        mac.update(minute.to_string().as_bytes());
        mac
    }

    /// The full unsubscribe URL for one subscriber and issue.
    pub fn url(&self, issue: &str, email: &str) -> String {
        format!("{}/u/{}", self.base_url, self.token(issue, email))
    }

    /// Checks a token in constant time; any defect is the same error, so a
    /// caller learns nothing about which part was wrong.
    pub fn verify(&self, token: &str) -> Result<Claim, InvalidToken> {
        let mut parts = token.split('.');
        let (Some(version), Some(issue), Some(hash), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(InvalidToken);
        };
        if !(version == VERSION || version == V1) || issue.is_empty() || issue.len() > 200 {
            return Err(InvalidToken);
        }
        let tag = B64.decode(tag).map_err(|_| InvalidToken)?;
        if tag.len() != MAC_LEN {
            return Err(InvalidToken);
        }
        if version == VERSION {
            let sealed: [u8; 32] = B64
                .decode(hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or(InvalidToken)?;
            let pad = self.pad(issue, &tag);
            let mut email_hash = [0u8; 32];
            for (i, b) in email_hash.iter_mut().enumerate() {
                *b = sealed[i] ^ pad[i];
            }
            self.seal_tag(issue, &email_hash)
                .verify_truncated_left(&tag)
                .map_err(|_| InvalidToken)?;
            return Ok(Claim {
                issue: issue.to_string(),
                email_hash,
            });
        }
        self.mac_of(issue, hash)
            .verify_truncated_left(&tag)
            .map_err(|_| InvalidToken)?;
        let email_hash: [u8; 32] = B64
            .decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or(InvalidToken)?;
        Ok(Claim {
            issue: issue.to_string(),
            email_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Signer::new(b"secret", "https://news.example.org/");
        let url = s.url("issue-17", " Ana@Example.org ");
        let token = url.strip_prefix("https://news.example.org/u/").unwrap();
        let claim = s.verify(token).unwrap();
        assert_eq!(claim.issue, "issue-17");
        assert_eq!(claim.email_hash, email_hash("ana@example.org"));
        assert!(!url.contains("ana"), "the address must not be in the URL");
        // Bound to the issue: the same MAC under another slug fails.
        let moved = token.replacen("issue-17", "issue-18", 1);
        assert_eq!(s.verify(&moved), Err(InvalidToken));
        // Another secret fails.
        assert_eq!(
            Signer::new(b"other", "https://x").verify(token),
            Err(InvalidToken)
        );
    }

    #[test]
    fn tampered_and_truncated_tokens_fail() {
        let s = Signer::new(b"secret", "https://x");
        let token = s.token("issue-17", "ana@example.org");
        let mut bad = token.clone().into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(s.verify(std::str::from_utf8(&bad).unwrap()).is_err());
        assert!(s.verify(&token[..token.len() - 4]).is_err());
        assert!(s.verify("").is_err());
        assert!(s.verify("v1.a.b.c.d").is_err());
        assert!(s.verify("v2.a.b.c.d").is_err());
        let other_hash = B64.encode(email_hash("bob@example.org"));
        let parts: Vec<&str> = token.split('.').collect();
        let swapped = format!("{}.issue-17.{other_hash}.{}", parts[0], parts[3]);
        assert!(s.verify(&swapped).is_err());
    }

    /// A link from a message sent before tokens became opaque (made by the
    /// v1 code with secret `secret`): still verifies, to the same person.
    const SENT_V1: &str =
        "v1.issue-17.hrkmChFc6sialzivI2ls46XXBEnejZXvKL11S7gBlrk.2M5twP0g8zDy2kz2aNvGuA";

    #[test]
    fn tokens_already_sent_still_verify() {
        let s = Signer::new(b"secret", "https://x");
        let claim = s.verify(SENT_V1).unwrap();
        assert_eq!(claim.issue, "issue-17");
        assert_eq!(claim.email_hash, email_hash("ana@example.org"));
        assert!(
            Signer::new(b"other-secret", "https://x")
                .verify(SENT_V1)
                .is_err()
        );
    }

    #[test]
    fn new_tokens_carry_no_hash_of_the_address() {
        let s = Signer::new(b"secret", "https://x");
        let token = s.token("issue-17", "ana@example.org");
        let plain_hash = B64.encode(email_hash("ana@example.org"));
        assert!(token.starts_with("v2.issue-17."), "{token}");
        assert!(!token.contains(&plain_hash), "{token}");
        // Nothing links two issues' tokens of one person.
        let other = s.token("issue-18", "ana@example.org");
        let part = |t: &str, i: usize| t.split('.').nth(i).unwrap().to_string();
        assert_ne!(part(&token, 2), part(&other, 2));
        assert_ne!(part(&token, 3), part(&other, 3));
        // It verifies to the same claim as before; tampering fails.
        let claim = s.verify(&token).unwrap();
        assert_eq!(claim.email_hash, email_hash("ana@example.org"));
        let moved = token.replacen("issue-17", "issue-18", 1);
        assert_eq!(s.verify(&moved), Err(InvalidToken));
        let mut bad = token.clone().into_bytes();
        bad[15] = if bad[15] == b'A' { b'B' } else { b'A' };
        assert!(s.verify(std::str::from_utf8(&bad).unwrap()).is_err());
        // A v1 token of the same claim still says the same thing.
        assert_eq!(s.verify(SENT_V1).unwrap(), claim);
    }
}
