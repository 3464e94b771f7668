//! Who may be mailed: the one rule, written once.
//!
//! An address may be mailed when no subscriber with its key has a status
//! other than `active` (unsubscribed, bounced, complained, pending …) and
//! its hash is not on the suppression list (a removed person, a bounce or
//! complaint recorded for an address that is not a subscriber, such as a
//! CSV-only one). Every query that picks recipients (a list campaign's
//! snapshot, a claim, a CSV send's check, `audience_size`, `recipients`)
//! embeds [`blocked_reason`], so a stored subscriber and a CSV-only address
//! are treated alike, and new statuses are blocked without touching them.

/// Whose mailability a query asks about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Who<'a> {
    /// A `subscribers` row under this alias (its own status is at hand).
    Row(&'a str),
    /// An address given by SQL expressions for its key and hash (a
    /// delivery row, a bound CSV address).
    Address { key: &'a str, hash: &'a str },
}

/// SQL for why `who` must not be mailed: the subscriber's status, or
/// `'suppressed'`; NULL when it may be mailed.
pub(crate) fn blocked_reason(who: Who<'_>) -> String {
    let (status, hash) = match who {
        Who::Row(s) => (
            format!("NULLIF({s}.status, 'active')"),
            format!("{s}.email_hash"),
        ),
        Who::Address { key, hash } => (
            format!(
                "(SELECT b.status FROM subscribers b WHERE b.email_key = {key} AND b.status <> 'active')"
            ),
            hash.to_string(),
        ),
    };
    format!(
        "COALESCE({status}, (SELECT '{SUPPRESSED}' FROM suppressions x WHERE x.email_hash = {hash} LIMIT 1))"
    )
}

/// SQL that is true when `who` may be mailed.
pub(crate) fn mailable(who: Who<'_>) -> String {
    format!("{} IS NULL", blocked_reason(who))
}

/// The reason given for an address on the suppression list.
const SUPPRESSED: &str = "suppressed";
