//! Building one recipient's message: RFC 5322 bytes that every transport
//! (preview files, dry run, SMTP) receives identically.

use std::str::FromStr;

use lettre::Address;
use lettre::address::Envelope;
use lettre::message::header::{self, ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};

use super::dkim::DkimSetup;
use super::mime::{EncodedPart, header_line};
use super::unsubscribe::Signer;
use super::verp::{BounceAddress, Verp};
use super::{DeliverError, Outgoing};
use crate::address::EmailAddress;
use crate::config::Config;
use crate::render::RenderedIssue;
use crate::render::personalise::{Escape, header_safe};
use crate::subscribers::{Recipient, RecipientFields};

/// Everything that is the same for all recipients of an issue, prepared
/// once; `build` does only the per-recipient work.
pub struct MessageFactory {
    issue: RenderedIssue,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    list_id: String,
    unsubscribe_mailto: Option<String>,
    domain: String,
    signer: Signer,
    dkim: Option<lettre::message::dkim::DkimConfig>,
    /// The headers every message shares, encoded once.
    common_headers: String,
    text: EncodedPart,
    html: EncodedPart,
    /// The subject when it has no subscriber fields, encoded once.
    fixed_subject: Option<String>,
    boundary: String,
    /// `bounces.address` and the tag keys: each message's envelope sender
    /// is then `local+<tag>@domain` (VERP, see `verp`).
    verp: Option<(BounceAddress, Verp)>,
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
    pub fn new(
        config: &Config,
        signer: Signer,
        issue: RenderedIssue,
    ) -> Result<MessageFactory, DeliverError> {
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
        let from = config_mailbox(n.from.trim()).map_err(|e| {
            DeliverError::Config(format!(
                "{origin}: newsletter.from `{}` is not a valid sender ({e}): write `Name <address@domain>`",
                n.from
            ))
        })?;
        let reply_to = match n.reply_to.trim() {
            "" => None,
            r => Some(config_mailbox(r).map_err(|e| {
                DeliverError::Config(format!(
                    "{origin}: newsletter.reply_to `{r}` is not a valid address ({e})"
                ))
            })?),
        };
        // The A-label form: it goes into Message-IDs and the DKIM d= tag.
        let domain = from.email.domain().to_string();
        let unsubscribe_mailto = match n.unsubscribe_mailto.trim() {
            "" => None,
            m => Some(m.strip_prefix("mailto:").unwrap_or(m).to_string()),
        };
        let dkim = match DkimSetup::from_config(config)? {
            Some(setup) => Some(setup.signing_config()?),
            None => None,
        };
        let list_id = config.list_id();
        // "=_" cannot occur in quoted-printable text, so the boundary cannot
        // collide with the parts it separates.
        let boundary = format!("=_tidings_{}", uuid::Uuid::new_v4().simple());
        let mut common_headers = header_line(header::From::from(Mailboxes::from(from.clone())));
        if let Some(rt) = &reply_to {
            common_headers.push_str(&header_line(header::ReplyTo::from(Mailboxes::from(
                rt.clone(),
            ))));
        }
        common_headers.push_str(&header_line(ListUnsubscribePost(
            "List-Unsubscribe=One-Click".into(),
        )));
        common_headers.push_str(&header_line(ListId(list_id.clone())));
        common_headers.push_str(&header_line(Precedence("bulk".into())));
        common_headers.push_str(&header_line(TidingsIssue(issue.slug.clone())));
        common_headers.push_str(&header_line(header::UserAgent::from(user_agent())));
        common_headers.push_str("MIME-Version: 1.0\r\n");
        common_headers.push_str(&format!(
            "Content-Type: multipart/alternative;\r\n boundary=\"{boundary}\"\r\n"
        ));
        let fixed_subject = issue.subject.fields().is_empty().then(|| {
            header_line(header::Subject::from(
                issue
                    .subject
                    .render(&crate::render::personalise::Generic, Escape::Header),
            ))
        });
        let verp = config
            .bounces
            .bounce_address()
            .map(|a| (a, Verp::from_signer(&signer)));
        Ok(MessageFactory {
            verp,
            text: EncodedPart::new(&issue.text, Escape::Text),
            html: EncodedPart::new(&issue.html, Escape::Html),
            issue,
            from,
            reply_to,
            list_id,
            unsubscribe_mailto,
            domain,
            signer,
            dkim,
            common_headers,
            fixed_subject,
            boundary,
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    pub fn issue(&self) -> &RenderedIssue {
        &self.issue
    }

    /// The message for one recipient, outside a campaign.
    pub fn build(&self, r: &Recipient) -> Result<Outgoing, BuildError> {
        self.build_for(r, None)
    }

    /// The message for one recipient of `campaign` (named in the VERP
    /// envelope sender when `bounces.address` is set).
    pub fn build_for(&self, r: &Recipient, campaign: Option<i64>) -> Result<Outgoing, BuildError> {
        let sender = self.envelope_sender(r, campaign)?;
        let sender = sender.as_ref().unwrap_or(&self.from.email);
        if self.dkim.is_some() {
            self.build_with_lettre(r, sender)
        } else {
            self.build_plain(r, sender)
        }
    }

    /// `bounces+<tag>@domain` when VERP is on; else the From address is
    /// the envelope sender.
    fn envelope_sender(
        &self,
        r: &Recipient,
        campaign: Option<i64>,
    ) -> Result<Option<Address>, BuildError> {
        let Some((address, verp)) = &self.verp else {
            return Ok(None);
        };
        let tagged = address.with_tag(&verp.encode_for(campaign, &r.email));
        tagged.parse::<Address>().map(Some).map_err(|e| {
            BuildError::Message(format!("VERP envelope sender `{tagged}` is invalid: {e}"))
        })
    }

    fn build_plain(&self, r: &Recipient, sender: &Address) -> Result<Outgoing, BuildError> {
        let address = parse_address(&r.email)?.wire().clone();
        let unsubscribe_url = self.signer.url(&self.issue.slug, &r.email);
        let fields = RecipientFields::new(r, &unsubscribe_url);
        let to = self.to_mailbox(r, address.clone());
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4().simple(), self.domain);

        let mut out = String::with_capacity(
            self.common_headers.len() + self.text.size_hint() + self.html.size_hint() + 1024,
        );
        out.push_str(&header_line(header::Date::now()));
        out.push_str(&header_line(header::To::from(Mailboxes::from(to))));
        match &self.fixed_subject {
            Some(s) => out.push_str(s),
            None => out.push_str(&header_line(header::Subject::from(
                self.issue.subject.render(&fields, Escape::Header),
            ))),
        }
        out.push_str(&header_line(header::MessageId::from(message_id.clone())));
        out.push_str(&header_line(ListUnsubscribe(
            self.list_unsubscribe(&unsubscribe_url),
        )));
        out.push_str(&self.common_headers);
        let b = &self.boundary;
        out.push_str(&format!(
            "\r\n--{b}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        ));
        self.text.write(&fields, &mut out);
        out.push_str(&format!(
            "\r\n--{b}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        ));
        self.html.write(&fields, &mut out);
        out.push_str(&format!("\r\n--{b}--\r\n"));
        let envelope = Envelope::new(Some(sender.clone()), vec![address])
            .map_err(|e| BuildError::Message(e.to_string()))?;
        Ok(Outgoing {
            to: r.email.clone(),
            envelope,
            bytes: out.into_bytes(),
            message_id,
        })
    }

    /// The `To` mailbox: the name made safe for a header (lettre panics on
    /// CR/LF in a display name).
    fn to_mailbox(&self, r: &Recipient, address: Address) -> Mailbox {
        let name = r.full_name();
        let name = header_safe(&name);
        Mailbox::new(
            (!name.trim().is_empty()).then(|| name.trim().to_string()),
            address,
        )
    }

    fn list_unsubscribe(&self, url: &str) -> String {
        match &self.unsubscribe_mailto {
            Some(m) => format!("<mailto:{m}?subject=unsubscribe>, <{url}>"),
            None => format!("<{url}>"),
        }
    }

    /// The same message through lettre's builder, which can DKIM-sign it.
    pub(crate) fn build_with_lettre(
        &self,
        r: &Recipient,
        sender: &Address,
    ) -> Result<Outgoing, BuildError> {
        let issue = &self.issue;
        let address = parse_address(&r.email)?.wire().clone();
        let envelope = Envelope::new(Some(sender.clone()), vec![address.clone()])
            .map_err(|e| BuildError::Message(e.to_string()))?;
        let unsubscribe_url = self.signer.url(&issue.slug, &r.email);
        let fields = RecipientFields::new(r, &unsubscribe_url);
        let content = issue.personalise(&fields);

        let to = self.to_mailbox(r, address);
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4().simple(), self.domain);
        let list_unsubscribe = self.list_unsubscribe(&unsubscribe_url);
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
            .user_agent(user_agent());
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
            envelope,
            bytes: message.formatted(),
            message_id,
        })
    }
}

fn user_agent() -> String {
    concat!("tidings/", env!("CARGO_PKG_VERSION")).to_string()
}

/// A UTF-8 text part; lettre picks 7bit, quoted-printable or base64.
fn text_part(body: String, content_type: ContentType) -> SinglePart {
    SinglePart::builder().header(content_type).body(body)
}

/// A recipient address, checked; its `wire()` form (A-label domain) is
/// what the envelope and the `To` header carry.
pub fn parse_address(email: &str) -> Result<EmailAddress, BuildError> {
    EmailAddress::parse(email).map_err(|e| BuildError::Address {
        address: email.to_string(),
        reason: e.to_string(),
    })
}

/// A `Name <address>` from the config, its domain in A-label form.
fn config_mailbox(text: &str) -> Result<Mailbox, String> {
    let mailbox = Mailbox::from_str(text).map_err(|e| e.to_string())?;
    let address = EmailAddress::parse(mailbox.email.as_ref()).map_err(|e| e.to_string())?;
    Ok(Mailbox::new(mailbox.name, address.wire().clone()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Issue;
    use crate::diagnostics::Diagnostics;
    use crate::render::{FieldSet, Renderer};

    const CONFIG: &str = "[newsletter]\nname = \"Test\"\nfrom = \"Test Letter <news@example.org>\"\nreply_to = \"Editor <ed@example.org>\"\nbase_url = \"https://news.example.org\"\nunsubscribe_mailto = \"unsub@example.org\"\n";

    fn factory(subject: &str) -> MessageFactory {
        factory_with(Config::parse(CONFIG, "t.toml").unwrap(), subject)
    }

    fn factory_with(config: Config, subject: &str) -> MessageFactory {
        let mut d = Diagnostics::default();
        let issue = Issue::parse(
            &format!("---\ntitle: Hello\nsubject: \"{subject}\"\npreheader: p\n---\nHi there, = signs and “quotes”.\n\n## Part\n\n{}\n", "long line ".repeat(30)),
            "t.md",
            "issue-9",
            &mut d,
        )
        .unwrap();
        let rendered = Renderer::new(None)
            .unwrap()
            .render(
                &issue,
                &config,
                &FieldSet {
                    attributes: vec!["city".into()],
                },
                &mut d,
            )
            .unwrap();
        MessageFactory::new(
            &config,
            Signer::new(b"secret-secret-secret", "https://news.example.org"),
            rendered,
        )
        .unwrap()
    }

    fn hostile() -> Recipient {
        let mut r = Recipient::new("ann@example.org");
        r.first_name = "Ann\r\nBcc: all@example.org".into();
        r.last_name = "Ørsted <b>".into();
        r.attributes.insert("city".into(), "Zürich".into());
        r
    }

    #[test]
    fn verp_envelope_sender_names_campaign_and_recipient() {
        let config = Config::parse(
            &format!("{CONFIG}[bounces]\naddress = \"bounces@news.example.org\"\n"),
            "t.toml",
        )
        .unwrap();
        let f = factory_with(config, "Hi");
        let r = Recipient::new("Ana@example.org");
        let m = f.build_for(&r, Some(42)).unwrap();
        let sender = m.envelope.from().unwrap().to_string();
        let tag = sender
            .strip_prefix("bounces+")
            .and_then(|s| s.strip_suffix("@news.example.org"))
            .unwrap_or_else(|| panic!("{sender}"));
        let d = Verp::from_signer(f.signer()).verify(tag).unwrap();
        assert_eq!(d.campaign, Some(42));
        assert!(d.recipient.matches("ana@example.org"));
        // Without the key, the envelope sender is the From address.
        let plain = factory("Hi").build_for(&r, Some(42)).unwrap();
        assert_eq!(
            plain.envelope.from().unwrap().to_string(),
            "news@example.org"
        );
    }

    #[test]
    fn fast_path_equals_lettre_builder() {
        let f = factory("{{ subscriber.first_name | default(value='Friend') }}, issue 9 ünïcode");
        let r = hostile();
        let fast = f.build(&r).unwrap();
        let slow = f.build_with_lettre(&r, &f.from.email).unwrap();
        let parser = mail_parser::MessageParser::default();
        let a = parser.parse(&fast.bytes).unwrap();
        let b = parser.parse(&slow.bytes).unwrap();
        assert_eq!(a.subject(), b.subject());
        assert_eq!(
            a.subject(),
            Some("Ann  Bcc: all@example.org, issue 9 ünïcode")
        );
        for (x, y) in [
            (a.from(), b.from()),
            (a.to(), b.to()),
            (a.reply_to(), b.reply_to()),
        ] {
            let (x, y) = (x.unwrap().first().unwrap(), y.unwrap().first().unwrap());
            assert_eq!((&x.name, &x.address), (&y.name, &y.address));
        }
        for h in [
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "List-Id",
            "Precedence",
        ] {
            assert_eq!(
                a.header_raw(h).map(str::trim),
                b.header_raw(h).map(str::trim),
                "{h}"
            );
        }
        assert_eq!(a.body_text(0), b.body_text(0));
        assert_eq!(a.body_html(0), b.body_html(0));
        assert!(
            a.body_html(0)
                .unwrap()
                .contains("Hi Ann  Bcc: all@example.org,")
        );
        // No header was added or split by the name.
        let head = std::str::from_utf8(&fast.bytes)
            .unwrap()
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_string();
        assert!(
            !head
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
            "{head}"
        );
        assert!(fast.bytes.split(|&c| c == b'\n').all(|l| l.len() <= 998));
        assert_eq!(fast.envelope.to(), [r.email.parse::<Address>().unwrap()]);
    }

    #[test]
    fn headers_are_present_and_unique_ids() {
        let f = factory("Plain subject");
        let one = f.build(&Recipient::new("a@example.org")).unwrap();
        let two = f.build(&Recipient::new("b@example.org")).unwrap();
        assert_ne!(one.message_id, two.message_id);
        assert!(one.message_id.ends_with("@example.org>"));
        let text = String::from_utf8(one.bytes).unwrap();
        for h in [
            "From: \"Test Letter\" <news@example.org>\r\n",
            "Reply-To: Editor <ed@example.org>\r\n",
            "To: a@example.org\r\n",
            "Subject: Plain subject\r\n",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            "List-Unsubscribe: <mailto:unsub@example.org?subject=unsubscribe>,\r\n <https://news.example.org/u/v2.issue-9.",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/alternative;\r\n boundary=\"=_tidings_",
        ] {
            assert!(text.contains(h), "missing {h:?} in\n{text}");
        }
        assert!(text.contains(&format!("Message-ID: {}\r\n", one.message_id)));
    }

    #[test]
    fn dkim_signs_the_unsubscribe_headers_too() {
        // An Ed25519 key is a base64 seed: no tool needed to make one.
        let seed = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
        let mut config = Config::parse(
            &format!("{CONFIG}[dkim]\nselector = \"news2026\"\n"),
            "t.toml",
        )
        .unwrap();
        config.secrets.dkim_private_key = Some(crate::config::Secret::new(seed));
        let f = factory_with(config, "Signed");
        let m = f.build(&Recipient::new("a@example.org")).unwrap();
        let text = String::from_utf8(m.bytes).unwrap();
        let head = text.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
        let sig = head
            .lines()
            .find(|l| l.starts_with("DKIM-Signature:"))
            .unwrap_or_else(|| panic!("no signature in\n{head}"));
        assert!(sig.contains("d=example.org;"), "{sig}");
        assert!(sig.contains("s=news2026;"), "{sig}");
        assert!(sig.contains("a=ed25519-sha256;"), "{sig}");
        let h = sig.split("h=").nth(1).unwrap().split(';').next().unwrap();
        for name in [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "List-Id",
        ] {
            assert!(
                h.split(':').any(|x| x.trim().eq_ignore_ascii_case(name)),
                "{name} not signed: {h}"
            );
        }
    }

    #[test]
    fn a_key_that_does_not_load_is_explained() {
        let mut config =
            Config::parse(&format!("{CONFIG}[dkim]\nselector = \"s\"\n"), "t.toml").unwrap();
        config.secrets.dkim_private_key = Some(crate::config::Secret::new(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ));
        config.origin = Some("tidings.toml".into());
        let err = match MessageFactory::new(&config, Signer::new(b"k", "https://x.org"), {
            let mut d = Diagnostics::default();
            let issue = Issue::parse("---\ntitle: T\n---\nx\n", "t.md", "t", &mut d).unwrap();
            Renderer::new(None)
                .unwrap()
                .render(&issue, &config, &FieldSet::default(), &mut d)
                .unwrap()
        }) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a broken key was accepted"),
        };
        // The key came from the environment: the config file is not named.
        assert!(
            err.starts_with("TIDINGS_DKIM_PRIVATE_KEY is not a readable PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn invalid_address_is_a_build_error() {
        let f = factory("S");
        let err = f.build(&Recipient::new("not an address")).unwrap_err();
        assert!(matches!(err, BuildError::Address { .. }), "{err}");
    }
}
