//! Bounces and complaints that arrive by mail after the relay said yes
//! (issue 12).
//!
//! This module owns everything between a report's bytes and a decision
//! about one subscriber: where reports come from ([`source`]: `.eml`
//! files, Maildirs, mboxes; [`imap`]: the bounce mailbox), what they say
//! ([`parse`]: RFC 3464 DSNs, RFC 5965 ARF complaints, the common
//! plain-text bounces, auto-replies to ignore), and whom they are about
//! ([`verp`]: signed envelope-sender tags; else our own Message-ID).
//!
//! It must not speak SQL: acting on a finding (marking a subscriber
//! bounced, counting a soft bounce, suppressing a complaint, remembering a
//! report's id so a second run changes nothing) is one call on a
//! [`BounceSink`], which the subscriber store implements. Everything here
//! runs, and is tested, without a database.

pub mod imap;
pub mod parse;
mod sink;
pub mod source;
pub use crate::deliver::verp;

pub use sink::StoreSink;

pub use parse::{Finding, Kind, ParseError, ParseOptions, Source};
pub use verp::{BounceAddress, Delivery, RecipientKey, Verp, VerpError};

use crate::config::Config;

/// Whom a finding is about, as far as the report proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A signed VERP tag names the delivery. `address` is the recipient
    /// the report names, when it is the same person (a forwarded address
    /// differs: the tag wins).
    Delivery {
        campaign: Option<i64>,
        recipient: RecipientKey,
        address: Option<String>,
    },
    /// No tag, but the report quotes a Message-ID of ours and names the
    /// recipient.
    Address(String),
}

/// Why a finding names nobody to act on; reported, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("{0}")]
    Tag(#[from] VerpError),
    #[error(
        "no VERP tag and no Message-ID of ours quoted: cannot tell the report is about our mail"
    )]
    NotOurs,
    #[error("the report names no recipient")]
    NoRecipient,
    #[error(
        "VERP tag `{0}` cannot be checked without TIDINGS_UNSUBSCRIBE_SECRET (the secret the send used)"
    )]
    NoSecret(String),
}

/// A finding and whom it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub finding: Finding,
    pub target: Result<Target, Unresolved>,
}

impl Resolved {
    /// The address to show: the report's, else the tag's key.
    pub fn who(&self) -> String {
        match (&self.target, &self.finding.recipient) {
            (Ok(Target::Address(a)), _) => a.clone(),
            (
                Ok(Target::Delivery {
                    address: Some(a), ..
                }),
                _,
            ) => a.clone(),
            (Ok(Target::Delivery { recipient, .. }), _) => format!("key:{}", recipient.hex()),
            (Err(_), Some(a)) => a.clone(),
            (Err(_), None) => "-".into(),
        }
    }

    pub fn campaign(&self) -> Option<i64> {
        match &self.target {
            Ok(Target::Delivery { campaign, .. }) => *campaign,
            _ => None,
        }
    }
}

/// Parses reports and resolves their findings with our keys.
#[derive(Debug, Clone)]
pub struct Processor {
    options: ParseOptions,
    verp: Option<Verp>,
    /// Message-IDs we make end in `@<domain>>`.
    own_domain: Option<String>,
}

impl Processor {
    /// `verp` is `None` when there is no unsubscribe secret: tags are then
    /// reported as unverifiable, not trusted.
    pub fn new(
        bounce_address: Option<BounceAddress>,
        verp: Option<Verp>,
        own_domain: Option<String>,
    ) -> Processor {
        Processor {
            options: ParseOptions { bounce_address },
            verp,
            own_domain: own_domain.map(|d| d.to_ascii_lowercase()),
        }
    }

    /// From the config: `bounces.address`, `newsletter.from`'s domain, and
    /// the tag keys of `TIDINGS_UNSUBSCRIBE_SECRET` (when set).
    pub fn from_config(config: &Config) -> Processor {
        // The one secret policy: checking tags needs the secret the send
        // signed them with, set and strong, as `serve` needs it for links.
        let verp = crate::deliver::unsubscribe::Signer::for_purpose(
            config,
            crate::deliver::unsubscribe::Purpose::Serve,
            &mut Default::default(),
        )
        .ok()
        .map(|signer| Verp::from_signer(&signer));
        let domain = crate::config::sender_domain(&config.newsletter.from)
            .map(|d| d.trim_end_matches('>').to_string());
        Processor::new(config.bounces.bounce_address(), verp, domain)
    }

    /// Every finding of one report, resolved.
    pub fn process(&self, raw: &[u8]) -> Result<Vec<Resolved>, ParseError> {
        Ok(parse::parse(raw, &self.options)?
            .into_iter()
            .map(|f| self.resolve(f))
            .collect())
    }

    fn resolve(&self, finding: Finding) -> Resolved {
        let target = self.target(&finding);
        Resolved { finding, target }
    }

    fn target(&self, f: &Finding) -> Result<Target, Unresolved> {
        if let Some(tag) = &f.verp_tag {
            let Some(verp) = &self.verp else {
                return Err(Unresolved::NoSecret(tag.clone()));
            };
            let d = verp.verify(tag)?;
            let address = f.recipient.clone().filter(|a| d.recipient.matches(a));
            return Ok(Target::Delivery {
                campaign: d.campaign,
                recipient: d.recipient,
                address,
            });
        }
        let ours = match (&f.original_message_id, &self.own_domain) {
            (Some(id), Some(domain)) => id
                .trim_end_matches('>')
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
            _ => false,
        };
        if !ours {
            return Err(Unresolved::NotOurs);
        }
        match &f.recipient {
            Some(a) => Ok(Target::Address(a.clone())),
            None => Err(Unresolved::NoRecipient),
        }
    }
}

/// What applying a finding did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Hard bounce: subscriber `bounced`, address suppressed.
    Bounced,
    /// Soft bounce counted; `suppressed` once `bounces.soft_limit` was
    /// reached within the last 5 sends.
    SoftCounted { count: u32, suppressed: bool },
    /// Complaint: unsubscribed and suppressed for good.
    Complained,
    /// This report was processed before: nothing changed.
    AlreadyProcessed,
    /// No delivery in the journal matches (a tag's campaign without that
    /// recipient; a quoted Message-ID we never sent to that address).
    UnknownRecipient,
    /// Not acted on, and why (an ignored kind, an unresolved target).
    NotApplied(String),
    /// A dry run: what would be done.
    WouldApply(String),
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Bounced => f.write_str("marked bounced, suppressed"),
            Applied::SoftCounted { count, suppressed } => {
                write!(f, "soft bounce {count} counted")?;
                if *suppressed {
                    f.write_str(", suppressed")?;
                }
                Ok(())
            }
            Applied::Complained => f.write_str("unsubscribed, suppressed (complaint)"),
            Applied::AlreadyProcessed => f.write_str("already processed: nothing changed"),
            Applied::UnknownRecipient => {
                f.write_str("not a delivery the journal recorded: nothing changed")
            }
            Applied::NotApplied(why) => write!(f, "nothing done: {why}"),
            Applied::WouldApply(what) => write!(f, "would {what}"),
        }
    }
}

/// A sink could not record (the database is down, …): the report stays
/// unprocessed (an IMAP message is left in place for the next fetch).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where findings take effect: the subscriber store implements this
/// (hard → bounced + suppressed, soft → counted, complaint → unsubscribed
/// + suppressed, each an event with `finding.source` and the campaign;
/// idempotent by `finding.report_id`). `origin` says where the report was
/// read (`path`, `path:line`, `imap:INBOX/uid 7`) for messages.
#[async_trait::async_trait]
pub trait BounceSink: Send + Sync {
    async fn apply(&self, resolved: &Resolved, origin: &str) -> Result<Applied, SinkError>;
}

/// The sink of a dry run: decides what the policy would do, changes
/// nothing.
#[derive(Debug, Default)]
pub struct DryRun;

#[async_trait::async_trait]
impl BounceSink for DryRun {
    async fn apply(&self, r: &Resolved, _origin: &str) -> Result<Applied, SinkError> {
        Ok(decide(r))
    }
}

/// What the policy says for a finding before the store is asked.
pub fn decide(r: &Resolved) -> Applied {
    if let Kind::Ignored(why) = &r.finding.kind {
        return Applied::NotApplied(why.clone());
    }
    if let Err(e) = &r.target {
        return Applied::NotApplied(e.to_string());
    }
    Applied::WouldApply(
        match r.finding.kind {
            Kind::Hard => "mark bounced and suppress",
            Kind::Soft => "count a soft bounce",
            Kind::Complaint => "unsubscribe and suppress (complaint)",
            Kind::Ignored(_) => unreachable!("handled above"),
        }
        .into(),
    )
}

/// Totals of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    pub hard: u64,
    pub soft: u64,
    pub complaints: u64,
    pub ignored: u64,
    /// Findings whose target could not be resolved (forged tag, not ours).
    pub refused: u64,
    /// Messages that could not be read or parsed.
    pub errors: u64,
}

impl Tally {
    pub fn count(&mut self, r: &Resolved) {
        match (&r.finding.kind, &r.target) {
            (Kind::Ignored(_), _) => self.ignored += 1,
            (_, Err(_)) => self.refused += 1,
            (Kind::Hard, _) => self.hard += 1,
            (Kind::Soft, _) => self.soft += 1,
            (Kind::Complaint, _) => self.complaints += 1,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages: {} hard, {} soft, {} complaints, {} ignored, {} refused, {} unreadable",
            self.messages,
            self.hard,
            self.soft,
            self.complaints,
            self.ignored,
            self.refused,
            self.errors
        )
    }
}
