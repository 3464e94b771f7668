//! Email addresses: the one place they are checked, compared and put on
//! the wire.
//!
//! An address is kept as the person wrote it (`user@bücher.example`). What
//! travels is its wire form: a non-ASCII domain becomes its A-label
//! (`user@xn--bcher-kva.example`, IDNA per UTS 46), which every server and
//! mail parser takes, in the envelope and in the headers alike. A non-ASCII
//! local part has no ASCII form: it needs a server that offers SMTPUTF8
//! (RFC 6531) and goes into the headers as UTF-8 (RFC 6532).

use std::fmt;
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// RFC 5321: a path is at most 256 octets including the angle brackets.
pub const MAX_EMAIL_CHARS: usize = 254;

/// A checked address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress {
    /// As written (trimmed).
    written: String,
    /// `local@A-label domain`: what the envelope and headers carry.
    wire: lettre::Address,
}

/// Why an address is not usable; `Display` is the reason text import
/// reports for a skipped row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty email address")]
    Empty,
    #[error("email address is longer than {MAX_EMAIL_CHARS} characters")]
    TooLong,
    #[error("invalid email address {0:?}: {1}")]
    Invalid(String, &'static str),
}

impl EmailAddress {
    pub fn parse(email: &str) -> Result<EmailAddress, AddressError> {
        let email = email.trim();
        if email.is_empty() {
            return Err(AddressError::Empty);
        }
        if email.len() > MAX_EMAIL_CHARS && email.chars().count() > MAX_EMAIL_CHARS {
            return Err(AddressError::TooLong);
        }
        let invalid = |why| AddressError::Invalid(email.to_string(), why);
        // The commonest faults first, in plainer words than the parser's.
        let (local, domain) = match email.rsplit_once('@') {
            None => return Err(invalid("no @")),
            Some(("", _)) => return Err(invalid("nothing before the @")),
            Some((_, "")) => return Err(invalid("nothing after the @")),
            Some(parts) => parts,
        };
        let wire = if domain.is_ascii() {
            email.to_string()
        } else {
            let ascii = Uts46::new()
                .to_ascii(
                    domain.as_bytes(),
                    AsciiDenyList::STD3,
                    Hyphens::Check,
                    DnsLength::Verify,
                )
                .map_err(|_| invalid("invalid international domain name"))?;
            format!("{local}@{ascii}")
        };
        // The wire form is what RFC 5321's limit is about.
        if wire.len() > MAX_EMAIL_CHARS {
            return Err(AddressError::TooLong);
        }
        let wire = lettre::Address::from_str(&wire).map_err(|e| {
            use lettre::address::AddressError as E;
            // Our own words: stable across lettre versions, and lower-case
            // to read as part of one sentence.
            invalid(match e {
                E::MissingParts => "no local part or no domain",
                E::Unbalanced => "unbalanced angle bracket",
                E::InvalidUser => "invalid local part (before the @)",
                E::InvalidDomain => "invalid domain",
                _ => "invalid characters",
            })
        })?;
        Ok(EmailAddress {
            written: email.to_string(),
            wire,
        })
    }

    /// The address as written.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The address for the envelope and the headers.
    pub fn wire(&self) -> &lettre::Address {
        &self.wire
    }

    /// Whether the address can only travel with SMTPUTF8 (its local part is
    /// not ASCII; a domain always has an ASCII form).
    pub fn needs_smtputf8(&self) -> bool {
        !self.wire.user().is_ascii()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// The key two addresses are compared by (`email_key` in the store, and
/// hashed into unsubscribe links and suppressions): trimmed and lower-cased
/// (the domain is case-insensitive by standard, and in practice every
/// mailbox provider treats the local part the same way), with an
/// international domain in its Unicode form, so `user@bücher.example` and
/// `user@xn--bcher-kva.example` are one person. The Unicode form (not the
/// A-label) keeps the keys, and so the links, of addresses stored before
/// domains were converted.
pub fn normalise(email: &str) -> String {
    let email = email.trim();
    let lower = email.to_lowercase();
    // Most addresses: nothing to convert (and import calls this per row).
    if lower.is_ascii() && !lower.contains("xn--") {
        return lower;
    }
    let Some((local, domain)) = lower.rsplit_once('@') else {
        return lower;
    };
    let (unicode, result) =
        Uts46::new().to_unicode(domain.as_bytes(), AsciiDenyList::STD3, Hyphens::Allow);
    match result {
        Ok(()) => format!("{local}@{unicode}"),
        // Not a domain IDNA can map: compared as written.
        Err(_) => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_domains_travel_as_a_labels() {
        let a = EmailAddress::parse(" user@Bücher.example ").unwrap();
        assert_eq!(a.as_written(), "user@Bücher.example");
        assert_eq!(a.wire().to_string(), "user@xn--bcher-kva.example");
        assert!(!a.needs_smtputf8());
        let a = EmailAddress::parse("user@xn--bcher-kva.example").unwrap();
        assert_eq!(a.wire().to_string(), "user@xn--bcher-kva.example");
        // ASCII domains are left exactly as written.
        let a = EmailAddress::parse("Ana@Example.org").unwrap();
        assert_eq!(a.wire().to_string(), "Ana@Example.org");
        let a = EmailAddress::parse("josé@bücher.example").unwrap();
        assert_eq!(a.wire().to_string(), "josé@xn--bcher-kva.example");
        assert!(a.needs_smtputf8());
    }

    #[test]
    fn reasons() {
        assert_eq!(EmailAddress::parse(" "), Err(AddressError::Empty));
        assert_eq!(
            EmailAddress::parse("a@b_c.ü").unwrap_err().to_string(),
            "invalid email address \"a@b_c.ü\": invalid international domain name"
        );
        // The A-label form is what must fit.
        let long = format!("{}@{}example", "a".repeat(60), "bücher.".repeat(14));
        assert!(long.chars().count() <= MAX_EMAIL_CHARS);
        assert_eq!(EmailAddress::parse(&long), Err(AddressError::TooLong));
    }

    #[test]
    fn u_and_a_labels_are_one_key() {
        assert_eq!(normalise(" Ana@Example.ORG "), "ana@example.org");
        assert_eq!(normalise("user@bücher.example"), "user@bücher.example");
        assert_eq!(
            normalise("User@XN--BCHER-KVA.example"),
            "user@bücher.example"
        );
        assert_eq!(normalise("user@BÜCHER.example"), "user@bücher.example");
        // NFD (u + combining diaeresis) is the same domain.
        assert_eq!(
            normalise("user@bu\u{308}cher.example"),
            "user@bücher.example"
        );
        // Not something IDNA can map: compared as written, lower-cased.
        assert_eq!(normalise("a@xn--.example"), "a@xn--.example");
        assert_eq!(normalise("no-at-sign"), "no-at-sign");
    }
}
