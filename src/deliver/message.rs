//! Building one recipient's message: RFC 5322 bytes that every transport
//! (preview files, dry run, SMTP) receives identically.

use std::str::FromStr;

use lettre::Address;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use super::unsubscribe::Signer;
use super::{DeliverError, Outgoing};
use crate::config::{Config, sender_domain};
use crate::render::RenderedIssue;
use crate::render::personalise::header_safe;
use crate::subscribers::{Recipient, RecipientFields};

/// Everything that is the same for all recipients of an issue, prepared
/// once; `build` does only the per-recipient work.
pub struct MessageFactory {
    from: Mailbox,
    reply_to: Option<Mailbox>,
    list_id: String,
    unsubscribe_mailto: Option<String>,
    domain: String,
    signer: Signer,
    dkim: Option<lettre::message::dkim::DkimConfig>,
}

/// Why one recipient's message could not be built. The recipient is
/// recorded as failed; the others go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("invalid address `{address}`: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot build message: {0}")]
    Message(String),
}

impl MessageFactory {
    /// Checks the sender identity and prepares the per-issue parts.
    /// `signer` makes the unsubscribe links.
    pub fn new(config: &Config, signer: Signer) -> Result<MessageFactory, DeliverError> {
        let n = &config.newsletter;
        let origin = config
            .origin
            .as_ref()
            .map_or("config".into(), |p| p.display().to_string());
        if n.from.trim().is_empty() {
            return Err(DeliverError::Config(format!(
                "{origin}: newsletter.from is not set: add e.g. from = \"{} <news@your-domain.org>\"",
                n.name
            )));
        }
        let from = Mailbox::from_str(n.from.trim()).map_err(|e| {
            DeliverError::Config(format!(
                "{origin}: newsletter.from `{}` is not a valid sender ({e}): write `Name <address@domain>`",
                n.from
            ))
        })?;
        let reply_to = match n.reply_to.trim() {
            "" => None,
            r => Some(Mailbox::from_str(r).map_err(|e| {
                DeliverError::Config(format!(
                    "{origin}: newsletter.reply_to `{r}` is not a valid address ({e})"
                ))
            })?),
        };
        let domain = sender_domain(&n.from).unwrap_or("localhost").to_string();
        let unsubscribe_mailto = match n.unsubscribe_mailto.trim() {
            "" => None,
            m => Some(m.strip_prefix("mailto:").unwrap_or(m).to_string()),
        };
        let dkim = if config.dkim.enabled() {
            Some(dkim_config(config, &domain, &origin)?)
        } else {
            None
        };
        Ok(MessageFactory {
            from,
            reply_to,
            list_id: config.list_id(),
            unsubscribe_mailto,
            domain,
            signer,
            dkim,
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The message for one recipient.
    pub fn build(&self, issue: &RenderedIssue, r: &Recipient) -> Result<Outgoing, BuildError> {
        let address = parse_address(&r.email)?;
        let unsubscribe_url = self.signer.url(&issue.slug, &r.email);
        let fields = RecipientFields::new(r, &unsubscribe_url);
        let content = issue.personalise(&fields);

        // lettre panics on CR/LF in a display name: neutralise first.
        let name = r.full_name();
        let name = header_safe(&name);
        let to = Mailbox::new(
            (!name.trim().is_empty()).then(|| name.trim().to_string()),
            address.clone(),
        );
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), self.domain);
        let mut list_unsubscribe = format!("<{unsubscribe_url}>");
        if let Some(m) = &self.unsubscribe_mailto {
            list_unsubscribe = format!("<mailto:{m}?subject=unsubscribe>, {list_unsubscribe}");
        }
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject)
            .date_now()
            .message_id(Some(message_id.clone()))
            .header(ListUnsubscribe(list_unsubscribe))
            .header(ListUnsubscribePost("List-Unsubscribe=One-Click".into()))
            .header(ListId(self.list_id.clone()))
            .header(Precedence("bulk".into()))
            .header(TidingsIssue(issue.slug.clone()))
            .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")).to_string());
        if let Some(rt) = &self.reply_to {
            builder = builder.reply_to(rt.clone());
        }
        let body = MultiPart::alternative()
            .singlepart(text_part(content.text, ContentType::TEXT_PLAIN))
            .singlepart(text_part(content.html, ContentType::TEXT_HTML));
        let mut message = builder
            .multipart(body)
            .map_err(|e| BuildError::Message(e.to_string()))?;
        if let Some(dkim) = &self.dkim {
            message.sign(dkim);
        }
        Ok(Outgoing {
            to: r.email.clone(),
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
            message_id,
        })
    }
}

/// A UTF-8 text part; lettre picks 7bit, quoted-printable or base64.
fn text_part(body: String, content_type: ContentType) -> SinglePart {
    SinglePart::builder().header(content_type).body(body)
}

/// A recipient address lettre accepts (it is stricter than most validators
/// and handles international domains).
pub fn parse_address(email: &str) -> Result<Address, BuildError> {
    Address::from_str(email.trim()).map_err(|e| BuildError::Address {
        address: email.to_string(),
        reason: e.to_string(),
    })
}

fn dkim_config(
    config: &Config,
    from_domain: &str,
    origin: &str,
) -> Result<lettre::message::dkim::DkimConfig, DeliverError> {
    use lettre::message::dkim::{
        DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
        DkimSigningKey,
    };
    let d = &config.dkim;
    let key = match (&config.secrets.dkim_private_key, d.key_file.trim()) {
        (Some(k), _) => k.expose().to_string(),
        (None, "") => {
            return Err(DeliverError::Config(format!(
                "{origin}: dkim.selector is set but there is no key: set dkim.key_file or TIDINGS_DKIM_PRIVATE_KEY"
            )));
        }
        (None, path) => {
            let path = config.base_dir().join(path);
            std::fs::read_to_string(&path).map_err(|e| {
                DeliverError::Config(format!(
                    "{origin}: cannot read dkim.key_file {}: {e}",
                    path.display()
                ))
            })?
        }
    };
    let (algorithm, key_text) = if key.contains("BEGIN RSA PRIVATE KEY") {
        (DkimSigningAlgorithm::Rsa, key.as_str())
    } else if key.contains("BEGIN") {
        return Err(DeliverError::Config(format!(
            "{origin}: the DKIM key must be an RSA key in PKCS#1 PEM (BEGIN RSA PRIVATE KEY) or a base64 Ed25519 seed; convert with `openssl rsa -traditional`"
        )));
    } else {
        (DkimSigningAlgorithm::Ed25519, key.trim())
    };
    let signing_key = DkimSigningKey::new(key_text, algorithm)
        .map_err(|e| DeliverError::Config(format!("{origin}: the DKIM key does not load: {e}")))?;
    let domain = if d.domain.trim().is_empty() {
        from_domain.to_string()
    } else {
        d.domain.trim().to_string()
    };
    // lettre signs only From, Subject, To and Date by default; the
    // unsubscribe headers must be covered too, or a relay could alter them.
    let headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
        "Content-Type",
        "MIME-Version",
    ]
    .into_iter()
    .map(HeaderName::new_from_ascii_str)
    .collect();
    Ok(DkimConfig::new(
        d.selector.clone(),
        domain,
        signing_key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

// Headers lettre has no type for; it keys typed headers by a static
// `name()`, so one type each. Their values come from config and signed URLs,
// never from subscriber data, and lettre still encodes and folds them.
macro_rules! raw_header_types {
    ($($ty:ident => $name:literal),* $(,)?) => {$(
        #[derive(Clone)]
        struct $ty(String);
        impl Header for $ty {
            fn name() -> HeaderName {
                HeaderName::new_from_ascii_str($name)
            }
            fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok($ty(s.to_string()))
            }
            fn display(&self) -> HeaderValue {
                HeaderValue::new(Self::name(), header_safe(&self.0).into_owned())
            }
        }
    )*};
}

raw_header_types! {
    ListUnsubscribe => "List-Unsubscribe",
    ListUnsubscribePost => "List-Unsubscribe-Post",
    ListId => "List-Id",
    Precedence => "Precedence",
    TidingsIssue => "X-Tidings-Issue",
}
