//! The subscriber model and the row-level rules shared by CSV import and
//! `subscribers add`: what a valid address, name, attribute and list name is,
//! and the exact reason text when one is not.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::Recipient;
use crate::address::EmailAddress;

/// Longest name, attribute value or list name we accept: far beyond any real
/// value, short enough that a garbled file (a missing quote swallowing the
/// rest of the file into one field) is caught on the row where it starts.
pub const MAX_FIELD_CHARS: usize = 1000;
pub use crate::address::MAX_EMAIL_CHARS;
/// List names are short labels (`monthly`); they are also joined with `;`.
pub const MAX_LIST_CHARS: usize = 100;
/// Separates list names in the `lists` column of an export or import.
pub const LIST_SEPARATOR: char = ';';

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Active,
    Unsubscribed,
    Bounced,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Active, Status::Unsubscribed, Status::Bounced];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Unsubscribed => "unsubscribed",
            Status::Bounced => "bounced",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so table columns line up.
        f.pad(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => Ok(Status::Active),
            "unsubscribed" => Ok(Status::Unsubscribed),
            "bounced" => Ok(Status::Bounced),
            _ => Err(format!(
                "status {s:?} is not one of active, unsubscribed, bounced"
            )),
        }
    }
}

/// One subscriber as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub id: i64,
    /// The address as given (trimmed).
    pub email: String,
    /// [`super::normalise_email`]: what two addresses are compared by.
    pub email_key: String,
    /// [`super::email_hash_hex`]: the identity in unsubscribe links and suppressions.
    pub email_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub attributes: BTreeMap<String, String>,
    /// Sorted.
    pub lists: Vec<String>,
    pub status: Status,
    /// Where the subscriber came from: `import:members.csv`, `add`, …
    pub source: String,
    /// RFC 3339, UTC, whole seconds (`2026-11-26T08:27:00Z`).
    pub created_at: String,
    pub updated_at: String,
    pub unsubscribed_at: Option<String>,
}

impl Subscriber {
    pub fn recipient(&self) -> Recipient {
        Recipient {
            email: self.email.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

/// What `subscribers add` asks for. `None` leaves a stored value as it is.
#[derive(Debug, Clone, Default)]
pub struct NewSubscriber {
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Set these attributes (an empty value removes one).
    pub attributes: BTreeMap<String, String>,
    /// Add to these lists.
    pub lists: Vec<String>,
}

/// A row left out of an import, and why. Displays as `line 7: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line of the file where the row starts.
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for SkippedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Recorded on new subscribers and events, e.g. `import:members.csv`.
    pub source: String,
    /// Add every imported row to these lists (besides a `lists` column).
    pub lists: Vec<String>,
    /// Import nothing if any row is bad.
    pub strict: bool,
    /// Validate and count without writing.
    pub dry_run: bool,
}

/// Counts of one import. `new + updated + unchanged + kept_unsubscribed +
/// kept_bounced + suppressed + skipped == rows`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Data rows read (the header not counted).
    pub rows: u64,
    pub new: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Already unsubscribed: left exactly as they were.
    pub kept_unsubscribed: u64,
    /// Already bounced: left exactly as they were.
    pub kept_bounced: u64,
    /// Removed earlier (or unsubscribed while not in the store): not added.
    pub suppressed: u64,
    pub skipped: u64,
    /// Whether the changes were committed (false for a dry run, or a
    /// strict import with bad rows).
    pub written: bool,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} row{}: {} new, {} updated, {} unchanged, {} kept unsubscribed, {} kept bounced, {} suppressed, {} skipped",
            self.rows,
            if self.rows == 1 { "" } else { "s" },
            self.new,
            self.updated,
            self.unchanged,
            self.kept_unsubscribed,
            self.kept_bounced,
            self.suppressed,
            self.skipped
        )
    }
}

/// Which subscribers `list`/`export` walk.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub list: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub active: u64,
    pub unsubscribed: u64,
    pub bounced: u64,
    /// Suppression entries (removed people, unsubscribes of unknown addresses).
    pub suppressed: u64,
    /// The same by cause (`removed`, `unsubscribed`, `bounced`,
    /// `complained`), sorted.
    pub suppressed_by: Vec<(String, u64)>,
    /// Sorted by list name.
    pub lists: Vec<ListStats>,
}

impl Stats {
    pub fn total(&self) -> u64 {
        self.active + self.unsubscribed + self.bounced
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListStats {
    pub list: String,
    pub active: u64,
    pub unsubscribed: u64,
    pub bounced: u64,
}

/// What `add` did. Only the first three are successes; the others name
/// why the person was not (re-)activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome {
    Added {
        id: i64,
    },
    Updated {
        id: i64,
    },
    Unchanged {
        id: i64,
    },
    /// Was unsubscribed or bounced, re-activated with `resubscribe`.
    Resubscribed {
        id: i64,
    },
    /// Unsubscribed since this time: left alone.
    Unsubscribed {
        since: Option<String>,
    },
    Bounced,
    /// Removed at their request (or unsubscribed while not in the store).
    Suppressed {
        reason: String,
        since: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeOutcome {
    Unsubscribed,
    AlreadyUnsubscribed,
    /// Not in the store: a suppression entry now keeps the address out.
    Suppressed,
    /// Not in the store and already suppressed.
    AlreadySuppressed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResubscribeOutcome {
    Resubscribed,
    AlreadyActive,
    /// A bounced address is not re-activated by a link.
    Bounced,
    /// The person did not unsubscribe themselves (an administrator did,
    /// or a bounce or complaint): a link does not undo that.
    NotSelfService,
    /// Not in the store (an unsubscribe-only suppression for it is lifted,
    /// so the person can be added again; an erasure stays).
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// Data erased, hash kept as a suppression.
    Removed,
    /// Not in the store: a suppression entry was recorded anyway.
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceOutcome {
    Bounced,
    AlreadyBounced,
    /// Unsubscribed people stay unsubscribed (the stronger state).
    Unsubscribed,
    /// Not a subscriber: the address is now on the suppression list.
    Suppressed,
    AlreadySuppressed,
}

/// Checks an address; the error is the reason text of a skipped row.
pub fn check_email(email: &str) -> Result<(), String> {
    EmailAddress::parse(email)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Checks a name (`single_line`) or attribute value.
pub fn check_text(field: &str, value: &str, single_line: bool) -> Result<(), String> {
    if single_line {
        if value.contains(['\r', '\n']) {
            return Err(format!("{field} contains a line break"));
        }
        // Names end up in a `To:` header: no control characters at all.
        if value.chars().any(char::is_control) {
            return Err(format!("{field} contains a control character"));
        }
    }
    // Bytes bound characters: count them only when it could matter.
    if value.len() > MAX_FIELD_CHARS && value.chars().count() > MAX_FIELD_CHARS {
        return Err(format!(
            "{field} is longer than {MAX_FIELD_CHARS} characters"
        ));
    }
    Ok(())
}

/// Checks a list name (already trimmed).
pub fn check_list_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty list name".into());
    }
    if name.contains([LIST_SEPARATOR, ',']) || name.chars().any(char::is_control) {
        return Err(format!(
            "list name {name:?} contains ';', ',' or a control character"
        ));
    }
    if name.len() > MAX_LIST_CHARS && name.chars().count() > MAX_LIST_CHARS {
        return Err(format!(
            "list name {name:?} is longer than {MAX_LIST_CHARS} characters"
        ));
    }
    Ok(())
}

/// Column names that are not attributes.
pub const RESERVED_COLUMNS: &[&str] = &[
    "email",
    "first_name",
    "last_name",
    "name",
    "lists",
    "status",
];

/// Checks an attribute name given on the command line (already lower-cased).
pub fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty attribute name".into());
    }
    if RESERVED_COLUMNS.contains(&name) {
        return Err(format!("`{name}` is a column of its own, not an attribute"));
    }
    if name.chars().any(|c| c.is_control() || c == ',') || name.len() > MAX_LIST_CHARS {
        return Err(format!(
            "attribute name {name:?} must be short, without commas or control characters"
        ));
    }
    Ok(())
}

/// Splits a `lists` cell: `monthly; events` -> [monthly, events].
pub fn split_lists(cell: &str) -> Result<Vec<String>, String> {
    let mut lists = Vec::new();
    for name in cell.split(LIST_SEPARATOR).map(str::trim) {
        if name.is_empty() {
            continue;
        }
        check_list_name(name)?;
        if !lists.iter().any(|l| l == name) {
            lists.push(name.to_string());
        }
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_reasons() {
        assert_eq!(check_email("  "), Err("empty email address".into()));
        assert_eq!(
            check_email("ana@"),
            Err("invalid email address \"ana@\": nothing after the @".into())
        );
        assert_eq!(
            check_email("ana.example.org"),
            Err("invalid email address \"ana.example.org\": no @".into())
        );
        assert_eq!(
            check_email("a b@example.org"),
            Err(
                "invalid email address \"a b@example.org\": invalid local part (before the @)"
                    .into()
            )
        );
        assert_eq!(
            check_email("ana@exa mple.org"),
            Err("invalid email address \"ana@exa mple.org\": invalid domain".into())
        );
        assert!(check_email("ana@example.org").is_ok());
        assert!(check_email("josé@bücher.example").is_ok());
        let long = format!("{}@example.org", "a".repeat(250));
        assert_eq!(
            check_email(&long),
            Err("email address is longer than 254 characters".into())
        );
    }

    #[test]
    fn text_and_lists() {
        assert_eq!(
            check_text("first_name", "An\na", true),
            Err("first_name contains a line break".into())
        );
        assert!(check_text("notes", "two\nlines", false).is_ok());
        assert_eq!(
            check_text("city", &"x".repeat(1001), false),
            Err("city is longer than 1000 characters".into())
        );
        assert!(check_text("city", &"é".repeat(1000), false).is_ok());
        assert_eq!(
            split_lists(" monthly ;events;;monthly").unwrap(),
            vec!["monthly", "events"]
        );
        assert!(split_lists("a,b").is_err());
    }
}
