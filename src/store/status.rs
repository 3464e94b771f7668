//! Status changes: the one place that moves a person between `active`,
//! `unsubscribed` and `bounced`, keeps the suppression list in step for
//! addresses that are not (or no longer) subscribers, and records the
//! event. Unsubscribe, resubscribe and bounce (from `tidings subscribers`,
//! a signed link, an SMTP rejection during a send) all decide here what
//! happens to whom, inside the caller's transaction.

use super::{SUPPRESSED_COMPLAINED, SUPPRESSED_UNSUBSCRIBED, StoreError, Tx, parse_status};
use crate::subscribers::model::{BounceOutcome, ResubscribeOutcome, Status, UnsubscribeOutcome};

/// Suppression reason for an address rejected by a server that is not a
/// subscriber (a CSV-only address).
pub const SUPPRESSED_BOUNCED: &str = "bounced";

/// Why a change happens: who or what asked (`link`, `dsn`, `arf`,
/// `webhook:ses`, `bounce: 550 …`) and the campaign whose message led to
/// it, if known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cause<'a> {
    pub source: &'a str,
    pub campaign: Option<i64>,
}

impl<'a> Cause<'a> {
    pub fn from(source: &'a str) -> Cause<'a> {
        Cause {
            source,
            campaign: None,
        }
    }
}

/// Someone as the store holds them, by the hash of their address.
struct Found {
    /// Their subscriber row and its status, if they are a subscriber.
    row: Option<(i64, Status)>,
}

async fn find(tx: &mut Tx<'_>, hash: &str) -> Result<Found, StoreError> {
    let row = tx
        .one(
            "SELECT id, status FROM subscribers WHERE email_hash = $1",
            vec![hash.to_string().into()],
        )
        .await?
        .map(|mut r| (r.int(0), parse_status(&r.text(1))));
    Ok(Found { row })
}

/// One change to make.
enum Step {
    /// Set the subscriber's status (and `unsubscribed_at` with it).
    Status(i64, Status),
    /// Put the address on the suppression list with this reason (no-op if
    /// it is there already).
    Suppress(&'static str),
    /// Take the address off the suppression list, if it is there for this
    /// reason.
    Unsuppress(&'static str),
    /// Nothing to change but the fact itself: the event is recorded (an
    /// unsubscribed person's address bounced: their last stop is now a
    /// bounce, which no self-service resubscribe lifts).
    Record,
    /// A complaint: unsubscribed if a subscriber (`Some(id)`), and on the
    /// suppression list in any case, whatever else it was there for: the
    /// strongest fact, which no resubscribe lifts.
    Complaint(Option<i64>),
}

/// Makes `step`; records `event` from `source` when it changed anything.
/// Returns whether it did.
async fn apply(
    tx: &mut Tx<'_>,
    hash: &str,
    step: Step,
    event: &str,
    cause: Cause<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = match step {
        Step::Status(id, status) => {
            let unsubscribed_at = match status {
                Status::Unsubscribed => "$1",
                Status::Active => "NULL",
                Status::Bounced => "unsubscribed_at",
            };
            // Only the constant fragment above is interpolated.
            tx.exec(
                &format!(
                    "UPDATE subscribers SET status = $3, unsubscribed_at = {unsubscribed_at}, updated_at = $1 WHERE id = $2"
                ),
                vec![now.into(), id.into(), status.as_str().into()],
            )
            .await?
        }
        Step::Suppress(reason) => {
            // A bounce outranks an unsubscribe: an address suppressed as
            // unsubscribed that then bounced must not come back through a
            // self-service resubscribe.
            tx.exec(
                "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (email_hash) DO UPDATE SET reason = excluded.reason \
                 WHERE suppressions.reason = 'unsubscribed' AND excluded.reason = 'bounced'",
                vec![hash.into(), reason.into(), now.into()],
            )
            .await?
        }
        Step::Record => 1,
        Step::Unsuppress(reason) => {
            tx.exec(
                "DELETE FROM suppressions WHERE email_hash = $1 AND reason = $2",
                vec![hash.into(), reason.into()],
            )
            .await?
        }
        Step::Complaint(id) => {
            let mut n = 0;
            if let Some(id) = id {
                n += tx
                    .exec(
                        "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_at = COALESCE(unsubscribed_at, $1), updated_at = $1 \
                         WHERE id = $2 AND status <> 'unsubscribed'",
                        vec![now.into(), id.into()],
                    )
                    .await?;
            }
            n + tx
                .exec(
                    "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (email_hash) DO UPDATE SET reason = excluded.reason \
                     WHERE suppressions.reason <> excluded.reason",
                    vec![hash.into(), SUPPRESSED_COMPLAINED.into(), now.into()],
                )
                .await?
        }
    } > 0;
    if changed {
        tx.event_in(hash, event, cause.source, now, cause.campaign)
            .await?;
    }
    Ok(changed)
}

/// Unsubscribes whoever has this address hash. A bounced person who asks
/// to unsubscribe becomes unsubscribed (consent is the stronger fact); an
/// address that is not a subscriber is suppressed, so a later import keeps
/// it out.
pub(crate) async fn unsubscribe(
    tx: &mut Tx<'_>,
    hash: &str,
    source: &str,
    now: i64,
) -> Result<UnsubscribeOutcome, StoreError> {
    Ok(match find(tx, hash).await?.row {
        Some((_, Status::Unsubscribed)) => UnsubscribeOutcome::AlreadyUnsubscribed,
        Some((id, _)) => {
            let step = Step::Status(id, Status::Unsubscribed);
            apply(tx, hash, step, "unsubscribed", Cause::from(source), now).await?;
            UnsubscribeOutcome::Unsubscribed
        }
        None => {
            let step = Step::Suppress(SUPPRESSED_UNSUBSCRIBED);
            match apply(tx, hash, step, "unsubscribed", Cause::from(source), now).await? {
                true => UnsubscribeOutcome::Suppressed,
                false => UnsubscribeOutcome::AlreadySuppressed,
            }
        }
    })
}

/// Re-activates someone who unsubscribed themselves (`self_service`: their
/// last stop was their own, by link or reply) and asked to come back.
/// Bounced people are not re-activated this way.
pub(crate) async fn resubscribe(
    tx: &mut Tx<'_>,
    hash: &str,
    source: &str,
    now: i64,
) -> Result<ResubscribeOutcome, StoreError> {
    let found = find(tx, hash).await?;
    let self_service = match found.row {
        Some((_, Status::Unsubscribed)) | None => super::self_service(tx, hash).await?,
        _ => false,
    };
    Ok(match found.row {
        Some((_, Status::Active)) => ResubscribeOutcome::AlreadyActive,
        Some((_, Status::Bounced)) => ResubscribeOutcome::Bounced,
        Some((_, Status::Unsubscribed)) if !self_service => ResubscribeOutcome::NotSelfService,
        Some((id, Status::Unsubscribed)) => {
            let step = Step::Status(id, Status::Active);
            apply(tx, hash, step, "resubscribed", Cause::from(source), now).await?;
            ResubscribeOutcome::Resubscribed
        }
        None if !self_service => ResubscribeOutcome::NotFound,
        None => {
            // A CSV-only address: lifting its suppression is all there is.
            let step = Step::Unsuppress(SUPPRESSED_UNSUBSCRIBED);
            apply(tx, hash, step, "resubscribed", Cause::from(source), now).await?;
            ResubscribeOutcome::NotFound
        }
    })
}

/// A permanent delivery failure for this address: an active subscriber
/// becomes bounced; an unsubscribed one stays unsubscribed (the stronger
/// state); an address that is not a subscriber is suppressed, so a CSV-only
/// address and a stored one are treated alike.
pub(crate) async fn bounce(
    tx: &mut Tx<'_>,
    hash: &str,
    cause: Cause<'_>,
    now: i64,
) -> Result<BounceOutcome, StoreError> {
    Ok(match find(tx, hash).await?.row {
        Some((_, Status::Bounced)) => BounceOutcome::AlreadyBounced,
        Some((_, Status::Unsubscribed)) => {
            apply(tx, hash, Step::Record, "bounced", cause, now).await?;
            BounceOutcome::Unsubscribed
        }
        Some((id, Status::Active)) => {
            let step = Step::Status(id, Status::Bounced);
            apply(tx, hash, step, "bounced", cause, now).await?;
            BounceOutcome::Bounced
        }
        None => {
            let step = Step::Suppress(SUPPRESSED_BOUNCED);
            match apply(tx, hash, step, "bounced", cause, now).await? {
                true => BounceOutcome::Suppressed,
                false => BounceOutcome::AlreadySuppressed,
            }
        }
    })
}

/// A complaint ("this is spam"): the person is unsubscribed and the
/// address suppressed at once, for good: never mailed again, even by
/// `send --resend`, and no link or `add --resubscribe` brings it back.
/// Returns whether anything changed.
pub(crate) async fn complain(
    tx: &mut Tx<'_>,
    hash: &str,
    cause: Cause<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    let id = find(tx, hash).await?.row.map(|(id, _)| id);
    apply(tx, hash, Step::Complaint(id), "complained", cause, now).await
}

/// Records a soft bounce (a full mailbox, a server that is down): an
/// event only; the caller decides when enough of them make a bounce.
pub(crate) async fn soft_bounce(
    tx: &mut Tx<'_>,
    hash: &str,
    cause: Cause<'_>,
    now: i64,
) -> Result<(), StoreError> {
    tx.event_in(hash, "soft-bounced", cause.source, now, cause.campaign)
        .await
}
