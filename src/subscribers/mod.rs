//! Subscribers: the model, CSV reading, and the store (SQLite or PostgreSQL).

use std::collections::BTreeMap;

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

/// The key two addresses are compared by: trimmed, and compared
/// case-insensitively (the domain is case-insensitive by standard, and in
/// practice every mailbox provider treats the local part the same way).
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

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

pub mod csv;

/// Lower-case hex SHA-256 of the normalised address: the subscriber's
/// identity in unsubscribe links and in the suppression list.
pub fn email_hash_hex(email: &str) -> String {
    use std::fmt::Write;
    crate::deliver::unsubscribe::email_hash(email).iter().fold(
        String::with_capacity(64),
        |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        },
    )
}
