//! What was learned after the relay accepted a message: bounces and
//! complaints from DSNs, ARF reports and provider webhooks, and what the
//! store did about each (the policy: hard bounce → bounced at once; soft
//! bounces → bounced once `soft_limit` of them fall within the address's
//! last five sends; complaint → unsubscribed and suppressed for good).
//! The status changes themselves are `status.rs`'s, the same ones an SMTP
//! rejection during a send and an unsubscribe link use.

use super::status::{self, Cause};
use super::{Store, StoreError, Tx, redact_address};
use crate::subscribers::{email_hash_hex, normalise_email};

/// What a report says happened to one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A permanent failure (5.x.x): the address does not work.
    Hard,
    /// A temporary one (4.x.x): a full mailbox, a server down.
    Soft,
    /// The reader marked the message as spam.
    Complaint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
            Kind::Complaint => "complaint",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "hard" => Ok(Kind::Hard),
            "soft" => Ok(Kind::Soft),
            "complaint" => Ok(Kind::Complaint),
            other => Err(format!("unknown kind of bounce `{other}`")),
        }
    }
}

/// One finding of one report, for [`Store::learn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// The report's identity (its Message-ID, or a digest of its bytes):
    /// the same report learned twice changes nothing.
    pub report_id: String,
    /// The address it is about.
    pub email: String,
    pub kind: Kind,
    /// The enhanced status code (`5.1.1`), if the report gave one.
    pub status: String,
    /// The server's words (the address itself is blanked when stored).
    pub diagnostic: String,
    /// The campaign whose message bounced, when the report names it (a
    /// VERP tag, a Message-ID of ours).
    pub campaign: Option<i64>,
    /// `dsn`, `arf`, `webhook:ses`, …
    pub source: String,
}

/// What the store did with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The subscriber is now bounced.
    Bounced,
    /// Not a subscriber (a CSV-only address): now on the suppression list.
    Suppressed,
    /// A soft bounce, counted: `count` of `limit` within the last sends.
    Counted { count: u64, limit: u32 },
    /// A complaint: unsubscribed and suppressed for good.
    Unsubscribed,
    /// Nothing left to do: already bounced, unsubscribed or suppressed.
    AlreadyBlocked,
    /// This report was learned before: nothing changed.
    Repeat,
}

impl Action {
    /// As stored and listed.
    pub fn as_str(&self) -> String {
        match self {
            Action::Bounced => "bounced".into(),
            Action::Suppressed => "suppressed".into(),
            Action::Counted { count, limit } => format!("counted {count}/{limit}"),
            Action::Unsubscribed => "unsubscribed".into(),
            Action::AlreadyBlocked => "none (already blocked)".into(),
            Action::Repeat => "none (seen before)".into(),
        }
    }
}

/// A row of `tidings bounces list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceRow {
    /// The address, while the store knows it (a subscriber, or a journal
    /// delivery); empty when only its hash is kept (a CSV-only address
    /// without a journal row, or after `subscribers remove`).
    pub email: String,
    pub kind: Kind,
    pub status: String,
    pub diagnostic: String,
    /// The issue of the campaign, when known.
    pub issue: Option<String>,
    pub campaign: Option<i64>,
    pub source: String,
    pub action: String,
    /// Unix ms.
    pub at: i64,
}

/// Soft bounces count within this many of the address's latest sends.
const SOFT_WINDOW_SENDS: i64 = 5;

impl Store {
    /// Applies the policy to one finding, in one transaction, once per
    /// report and address.
    pub async fn learn(&self, l: &Learned, soft_limit: u32) -> Result<Action, StoreError> {
        let key = normalise_email(&l.email);
        let hash = email_hash_hex(&l.email);
        let now = super::stamp();
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        let seen = tx
            .count(
                "SELECT COUNT(*) FROM bounces WHERE report_id = $1 AND email_hash = $2",
                vec![l.report_id.clone().into(), hash.clone().into()],
            )
            .await?;
        if seen > 0 {
            tx.rollback().await?;
            return Ok(Action::Repeat);
        }
        // Servers quote the address as written or as its wire form (the
        // A-label of an internationalised domain): blank both.
        let mut diagnostic = redact_address(&l.diagnostic, &key);
        if let Ok(a) = crate::address::EmailAddress::parse(&l.email) {
            diagnostic = redact_address(&diagnostic, &a.wire().to_string().to_lowercase());
        }
        let source = match l.status.as_str() {
            "" => l.source.clone(),
            code => format!("{}: {code}", l.source),
        };
        let cause = Cause {
            source: &source,
            campaign: l.campaign,
        };
        // The row first (its action filled in below): a soft bounce then
        // counts itself among the window's.
        let row = tx
            .one(
                "INSERT INTO bounces (report_id, email_hash, kind, status, diagnostic, campaign_id, source, action, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, '', $8) RETURNING id",
                vec![
                    l.report_id.clone().into(),
                    hash.clone().into(),
                    l.kind.as_str().into(),
                    l.status.clone().into(),
                    diagnostic.into(),
                    l.campaign.into(),
                    l.source.clone().into(),
                    now.into(),
                ],
            )
            .await?
            .map_or(0, |r| r.int(0));
        let action = match l.kind {
            Kind::Hard => bounce(&mut tx, &hash, cause, now).await?,
            Kind::Complaint => match status::complain(&mut tx, &hash, cause, now).await? {
                true => Action::Unsubscribed,
                false => Action::AlreadyBlocked,
            },
            Kind::Soft => {
                status::soft_bounce(&mut tx, &hash, cause, now).await?;
                let count = soft_bounces_in_window(&mut tx, &hash).await?;
                if count >= u64::from(soft_limit.max(1)) {
                    bounce(&mut tx, &hash, cause, now).await?
                } else {
                    Action::Counted {
                        count,
                        limit: soft_limit,
                    }
                }
            }
        };
        tx.exec(
            "UPDATE bounces SET action = $1 WHERE id = $2",
            vec![action.as_str().into(), row.into()],
        )
        .await?;
        tx.commit().await?;
        Ok(action)
    }

    /// What was learned since `since_ms` (Unix ms), newest first.
    pub async fn bounces(&self, since_ms: i64) -> Result<Vec<BounceRow>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let rows = tx
            .fetch(
                "SELECT COALESCE((SELECT s.email FROM subscribers s WHERE s.email_hash = b.email_hash), \
                        (SELECT d.email FROM deliveries d WHERE d.email_hash = b.email_hash AND d.email <> '' \
                          ORDER BY d.campaign_id DESC LIMIT 1), ''), \
                        b.kind, b.status, b.diagnostic, c.issue, b.campaign_id, b.source, b.action, b.at \
                 FROM bounces b LEFT JOIN campaigns c ON c.id = b.campaign_id \
                 WHERE b.at >= $1 ORDER BY b.at DESC, b.id DESC",
                vec![since_ms.into()],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(|mut r| BounceRow {
                email: r.text(0),
                kind: r.text(1).parse().unwrap_or(Kind::Hard),
                status: r.text(2),
                diagnostic: r.text(3),
                issue: r.opt_text(4),
                campaign: r.opt_text(5).and_then(|c| c.parse().ok()),
                source: r.text(6),
                action: r.text(7),
                at: r.int(8),
            })
            .collect())
    }

    /// Bounces (hard, and soft that made a bounce) and complaints learned
    /// for a campaign: (bounced, complained).
    pub async fn campaign_feedback(&self, campaign: i64) -> Result<(u64, u64), StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let bounced = tx
            .count(
                "SELECT COUNT(DISTINCT email_hash) FROM bounces WHERE campaign_id = $1 \
                 AND (kind = 'hard' OR (kind = 'soft' AND action IN ('bounced', 'suppressed')))",
                vec![campaign.into()],
            )
            .await?;
        let complained = tx
            .count(
                "SELECT COUNT(DISTINCT email_hash) FROM bounces WHERE campaign_id = $1 AND kind = 'complaint'",
                vec![campaign.into()],
            )
            .await?;
        tx.rollback().await?;
        Ok((bounced, complained))
    }

    /// The campaign and address of our message with this Message-ID (the
    /// fallback for a report without a VERP tag). With the address the
    /// report names, one index lookup; without, a scan of the journal.
    pub async fn recipient_of(
        &self,
        message_id: &str,
        email: Option<&str>,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let row = match email {
            Some(e) => {
                tx.one(
                    "SELECT campaign_id, email FROM deliveries WHERE email_hash = $1 AND message_id = $2 LIMIT 1",
                    vec![email_hash_hex(e).into(), message_id.to_string().into()],
                )
                .await?
            }
            None => {
                tx.one(
                    "SELECT campaign_id, email FROM deliveries WHERE message_id = $1 AND email <> '' LIMIT 1",
                    vec![message_id.to_string().into()],
                )
                .await?
            }
        };
        tx.rollback().await?;
        Ok(row.map(|mut r| (r.int(0), r.text(1))))
    }

    /// The address of a campaign's delivery whose address hash starts with
    /// `hash_prefix` (hex), as a VERP tag names it; `None` when there is no
    /// such delivery, or it was erased.
    pub async fn delivery_by_key(
        &self,
        campaign: i64,
        hash_prefix: &str,
    ) -> Result<Option<String>, StoreError> {
        if hash_prefix.is_empty() || !hash_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let prefix = hash_prefix.to_ascii_lowercase();
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        // A range on the hash index: hex digits sort below 'g'.
        let row = tx
            .one(
                "SELECT email FROM deliveries WHERE email_hash >= $1 AND email_hash < $2 \
                 AND campaign_id = $3 AND email <> '' LIMIT 1",
                vec![
                    prefix.clone().into(),
                    format!("{prefix}g").into(),
                    campaign.into(),
                ],
            )
            .await?;
        tx.rollback().await?;
        Ok(row.map(|mut r| r.text(0)))
    }
}

/// A bounce, as an action.
async fn bounce(
    tx: &mut Tx<'_>,
    hash: &str,
    cause: Cause<'_>,
    now: i64,
) -> Result<Action, StoreError> {
    use crate::subscribers::model::BounceOutcome as B;
    Ok(match status::bounce(tx, hash, cause, now).await? {
        B::Bounced => Action::Bounced,
        B::Suppressed => Action::Suppressed,
        B::AlreadyBounced | B::Unsubscribed | B::AlreadySuppressed => Action::AlreadyBlocked,
    })
}

/// Sends that soft-bounced, for this address, within its last five
/// campaigns: each campaign counts once however many reports it drew (a
/// DSN and a webhook, a provider's notice per attempt); a report that
/// names no campaign, or one this address has no delivery in, counts once
/// if learned since the fifth latest campaign that mailed the address
/// began.
async fn soft_bounces_in_window(tx: &mut Tx<'_>, hash: &str) -> Result<u64, StoreError> {
    let recent = format!(
        "SELECT c.id FROM campaigns c JOIN deliveries d ON d.campaign_id = c.id \
         WHERE d.email_hash = $1 AND d.status IN ('sent', 'failed') \
         ORDER BY c.created_at DESC LIMIT {SOFT_WINDOW_SENDS}"
    );
    let since = tx
        .one(
            &format!("SELECT MIN(c.created_at) FROM campaigns c WHERE c.id IN ({recent})"),
            vec![hash.to_string().into()],
        )
        .await?
        .and_then(|r| r.opt_int(0))
        .unwrap_or(0);
    let by_campaign = tx
        .count(
            &format!(
                "SELECT COUNT(DISTINCT campaign_id) FROM bounces \
                 WHERE email_hash = $1 AND kind = 'soft' AND campaign_id IN ({recent})"
            ),
            vec![hash.to_string().into()],
        )
        .await?;
    let others = tx
        .count(
            &format!(
                "SELECT COUNT(DISTINCT COALESCE(CAST(campaign_id AS TEXT), 'report ' || CAST(id AS TEXT))) \
                 FROM bounces WHERE email_hash = $1 AND kind = 'soft' AND at >= $2 \
                 AND (campaign_id IS NULL OR campaign_id NOT IN ({recent}))"
            ),
            vec![hash.to_string().into(), since.into()],
        )
        .await?;
    Ok(by_campaign + others)
}
