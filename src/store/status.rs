//! Status changes: the one place that moves a person between `active`,
//! `unsubscribed` and `bounced`, keeps the suppression list in step for
//! addresses that are not (or no longer) subscribers, and records the
//! event. Unsubscribe, resubscribe and bounce (from `tidings subscribers`,
//! a signed link, an SMTP rejection during a send) all decide here what
//! happens to whom, inside the caller's transaction.

use super::{SUPPRESSED_UNSUBSCRIBED, StoreError, Tx, parse_status};
use crate::subscribers::model::{BounceOutcome, ResubscribeOutcome, Status, UnsubscribeOutcome};

/// Suppression reason for an address rejected by a server that is not a
/// subscriber (a CSV-only address).
pub const SUPPRESSED_BOUNCED: &str = "bounced";

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
}

/// Makes `step`; records `event` from `source` when it changed anything.
/// Returns whether it did.
async fn apply(
    tx: &mut Tx<'_>,
    hash: &str,
    step: Step,
    event: &str,
    source: &str,
    now: &str,
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
            tx.exec(
                "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (email_hash) DO NOTHING",
                vec![hash.into(), reason.into(), now.into()],
            )
            .await?
        }
        Step::Unsuppress(reason) => {
            tx.exec(
                "DELETE FROM suppressions WHERE email_hash = $1 AND reason = $2",
                vec![hash.into(), reason.into()],
            )
            .await?
        }
    } > 0;
    if changed {
        tx.event(hash, event, source, now).await?;
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
    now: &str,
) -> Result<UnsubscribeOutcome, StoreError> {
    Ok(match find(tx, hash).await?.row {
        Some((_, Status::Unsubscribed)) => UnsubscribeOutcome::AlreadyUnsubscribed,
        Some((id, _)) => {
            let step = Step::Status(id, Status::Unsubscribed);
            apply(tx, hash, step, "unsubscribed", source, now).await?;
            UnsubscribeOutcome::Unsubscribed
        }
        None => {
            let step = Step::Suppress(SUPPRESSED_UNSUBSCRIBED);
            match apply(tx, hash, step, "unsubscribed", source, now).await? {
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
    now: &str,
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
            apply(tx, hash, step, "resubscribed", source, now).await?;
            ResubscribeOutcome::Resubscribed
        }
        None if !self_service => ResubscribeOutcome::NotFound,
        None => {
            // A CSV-only address: lifting its suppression is all there is.
            let step = Step::Unsuppress(SUPPRESSED_UNSUBSCRIBED);
            apply(tx, hash, step, "resubscribed", source, now).await?;
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
    source: &str,
    now: &str,
) -> Result<BounceOutcome, StoreError> {
    Ok(match find(tx, hash).await?.row {
        Some((_, Status::Bounced)) => BounceOutcome::AlreadyBounced,
        Some((_, Status::Unsubscribed)) => BounceOutcome::Unsubscribed,
        Some((id, Status::Active)) => {
            let step = Step::Status(id, Status::Bounced);
            apply(tx, hash, step, "bounced", source, now).await?;
            BounceOutcome::Bounced
        }
        None => {
            let step = Step::Suppress(SUPPRESSED_BOUNCED);
            match apply(tx, hash, step, "bounced", source, now).await? {
                true => BounceOutcome::Suppressed,
                false => BounceOutcome::AlreadySuppressed,
            }
        }
    })
}
