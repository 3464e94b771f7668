//! Subscribers: who a person is to tidings (the model, the address key and
//! hash, [`Recipient`]) and the CSV format (import rows, export).
//!
//! Owns no storage: the database is the `store`'s, the `tidings subscribers`
//! commands are in `cli/subscribers.rs`. Must not import `store`, `deliver`
//! or `cli` (a test cross-checks the hash with `deliver`'s).

pub mod csv;
pub mod model;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use model::{ImportOptions, ImportReport, ListFilter, SkippedRow, Stats, Status, Subscriber};

use crate::render::personalise::Fields;

/// Someone an issue is sent to: what personalisation and addressing need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipient {
    /// The address as given.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// Every other field (extra CSV columns), usable in templates.
    pub attributes: BTreeMap<String, String>,
}

impl Recipient {
    pub fn new(email: impl Into<String>) -> Recipient {
        Recipient {
            email: email.into(),
            ..Recipient::default()
        }
    }

    /// "First Last", or whichever part exists.
    pub fn full_name(&self) -> String {
        match (self.first_name.trim(), self.last_name.trim()) {
            ("", "") => String::new(),
            (f, "") => f.to_string(),
            ("", l) => l.to_string(),
            (f, l) => format!("{f} {l}"),
        }
    }

    /// The comparison key of the address (see [`normalise_email`]).
    pub fn key(&self) -> String {
        normalise_email(&self.email)
    }
}

/// The key two addresses are compared by (`email_key` in the store): see
/// [`crate::address::normalise`].
pub fn normalise_email(email: &str) -> String {
    crate::address::normalise(email)
}

/// SHA-256 of the normalised address: the identity in unsubscribe links
/// and in the suppression list (`deliver::unsubscribe::email_hash` is the
/// same bytes).
pub fn email_hash(email: &str) -> [u8; 32] {
    Sha256::digest(normalise_email(email).as_bytes()).into()
}

/// [`email_hash`] as stored (`email_hash` columns): lowercase hex.
pub fn email_hash_hex(email: &str) -> String {
    key_hash_hex(&normalise_email(email))
}

/// [`email_hash_hex`] of an address already normalised.
pub(crate) fn key_hash_hex(key: &str) -> String {
    let mut out = String::with_capacity(64);
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A recipient plus what only the send knows (the signed unsubscribe link).
pub struct RecipientFields<'a> {
    pub recipient: &'a Recipient,
    pub unsubscribe_url: &'a str,
    full_name: String,
}

impl<'a> RecipientFields<'a> {
    pub fn new(recipient: &'a Recipient, unsubscribe_url: &'a str) -> Self {
        RecipientFields {
            recipient,
            unsubscribe_url,
            full_name: recipient.full_name(),
        }
    }
}

impl Fields for RecipientFields<'_> {
    fn field(&self, field: &str) -> Option<&str> {
        let r = self.recipient;
        match field {
            "email" => Some(&r.email),
            "first_name" => Some(&r.first_name),
            "last_name" => Some(&r.last_name),
            "name" => Some(&self.full_name),
            "unsubscribe_url" => Some(self.unsubscribe_url),
            other => r.attributes.get(other).map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_the_unsubscribe_links_hash_in_hex() {
        let bytes = crate::deliver::unsubscribe::email_hash(" Ana@Example.org ");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(email_hash_hex("ana@example.org"), hex);
        assert_eq!(
            email_hash_hex("ana@example.org"),
            // printf 'ana@example.org' | sha256sum
            "86b9260a115ceac89a9738af23696ce3a5d70449de8d95ef28bd754bb80196b9"
        );
    }
}
