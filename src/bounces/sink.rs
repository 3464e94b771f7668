//! Findings take effect in the store: the one [`BounceSink`] that changes
//! anything. The policy itself (hard → bounced, soft → counted then
//! bounced, complaint → unsubscribed and suppressed for good, once per
//! report) is the store's `learn`; this only says whom a finding is about.

use super::parse::Kind;
use super::{Applied, BounceSink, Resolved, SinkError, Target};
use crate::config::Config;
use crate::store::{self, Action, Learned, Store, StoreError};

/// Applies findings to the subscriber store.
pub struct StoreSink {
    store: Store,
    soft_limit: u32,
}

impl StoreSink {
    pub fn new(store: Store, soft_limit: u32) -> StoreSink {
        StoreSink { store, soft_limit }
    }

    /// The configured store, with `bounces.soft_limit`.
    pub async fn open(config: &Config) -> Result<StoreSink, StoreError> {
        let store = Store::open(&config.database, &config.base_dir()).await?;
        Ok(StoreSink::new(store, config.bounces.soft_limit))
    }

    /// The address and campaign a finding is about, if the store knows them.
    async fn whom(&self, r: &Resolved) -> Result<Option<(String, Option<i64>)>, StoreError> {
        Ok(match &r.target {
            Err(_) => None,
            // No tag: the report must quote a Message-ID the journal
            // recorded for that very recipient. Anyone can write our domain
            // into a Message-ID; only a delivery we made proves the report
            // is about our mail (else a forged complaint could suppress
            // any address).
            Ok(Target::Address(a)) => match &r.finding.original_message_id {
                Some(id) => self
                    .store
                    .recipient_of(id, Some(a))
                    .await?
                    .map(|(c, _)| (a.clone(), Some(c))),
                None => None,
            },
            Ok(Target::Delivery {
                campaign,
                address: Some(a),
                ..
            }) => Some((a.clone(), *campaign)),
            // The tag alone: the campaign's delivery with that key.
            Ok(Target::Delivery {
                campaign: Some(c),
                recipient,
                address: None,
            }) => self
                .store
                .delivery_by_key(*c, &recipient.hex())
                .await?
                .map(|a| (a, Some(*c))),
            Ok(Target::Delivery { campaign: None, .. }) => None,
        })
    }
}

#[async_trait::async_trait]
impl BounceSink for StoreSink {
    async fn apply(&self, r: &Resolved, _origin: &str) -> Result<Applied, SinkError> {
        let kind = match &r.finding.kind {
            Kind::Ignored(why) => return Ok(Applied::NotApplied(why.clone())),
            Kind::Hard => store::Kind::Hard,
            Kind::Soft => store::Kind::Soft,
            Kind::Complaint => store::Kind::Complaint,
        };
        if let Err(e) = &r.target {
            return Ok(Applied::NotApplied(e.to_string()));
        }
        let err = |e: StoreError| SinkError(e.to_string());
        let Some((email, campaign)) = self.whom(r).await.map_err(err)? else {
            return Ok(Applied::UnknownRecipient);
        };
        let learned = Learned {
            report_id: r.finding.report_id.clone(),
            email,
            kind,
            status: r.finding.status.clone().unwrap_or_default(),
            diagnostic: r.finding.diagnostic.clone().unwrap_or_default(),
            campaign,
            source: r.finding.source.as_str().to_string(),
        };
        let action = self
            .store
            .learn(&learned, self.soft_limit)
            .await
            .map_err(err)?;
        Ok(match (kind, action) {
            (_, Action::Repeat) => Applied::AlreadyProcessed,
            (_, Action::AlreadyBlocked) => {
                Applied::NotApplied("already bounced, unsubscribed or suppressed".into())
            }
            (_, Action::Counted { count, .. }) => Applied::SoftCounted {
                count: count as u32,
                suppressed: false,
            },
            (store::Kind::Soft, Action::Bounced | Action::Suppressed) => Applied::SoftCounted {
                count: self.soft_limit,
                suppressed: true,
            },
            (_, Action::Bounced | Action::Suppressed) => Applied::Bounced,
            (_, Action::Unsubscribed) => Applied::Complained,
        })
    }
}
