//! What one report says: raw message bytes in, typed findings out.
//!
//! MIME is `mail-parser`'s; this file only reads what sits inside the
//! parts: the RFC 3464 `message/delivery-status` and RFC 5965
//! `message/feedback-report` fields (plain header blocks), and the text of
//! the common non-standard bounces (Exchange/Office 365, qmail, Gmail).
//! It never panics on input and never guesses: a message it cannot read
//! is an error saying what is wrong, one it reads but that is no bounce is
//! an `Ignored` finding with the reason.

use std::borrow::Cow;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use super::verp::{BounceAddress, MAX_TAG_LEN};

/// What a report means for its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A permanent failure (5.x.x): the address is dead.
    Hard,
    /// A temporary failure that the sending server gave up on (4.x.x):
    /// counted; enough of them suppress the address.
    Soft,
    /// The recipient reported the message as spam.
    Complaint,
    /// Nothing to do, and why (an auto-reply, a delay, a success notice…).
    Ignored(String),
}

impl Kind {
    /// One word for tables and events.
    pub fn word(&self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
            Kind::Complaint => "complaint",
            Kind::Ignored(_) => "ignored",
        }
    }
}

/// Which policy source a finding is recorded under (`dsn`, `arf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A delivery status notification, standard or not.
    Dsn,
    /// An ARF feedback report (a complaint).
    Arf,
    /// Neither (an auto-reply, an unrelated message).
    Other,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Dsn => "dsn",
            Source::Arf => "arf",
            Source::Other => "other",
        }
    }
}

/// One recipient's outcome as a report states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub source: Source,
    /// The report's format: `rfc3464`, `arf`, `exchange`, `qmail`,
    /// `gmail`, `text` (another plain-text bounce), `auto-reply`, `other`.
    pub format: &'static str,
    /// The address that failed or complained (`Original-Recipient`, else
    /// `Final-Recipient`; `Original-Rcpt-To` in ARF), as written there.
    pub recipient: Option<String>,
    /// The enhanced status code, e.g. `5.1.1`.
    pub status: Option<String>,
    /// The remote server's words (`Diagnostic-Code`, or the bounce text).
    pub diagnostic: Option<String>,
    /// The VERP tag of the address the report was sent to, unverified.
    pub verp_tag: Option<String>,
    /// The Message-ID of the message that bounced, when quoted.
    pub original_message_id: Option<String>,
    /// The report's own Message-ID, or `sha256:<hex>` of its bytes when it
    /// has none: what makes processing it twice change nothing.
    pub report_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not an email message: no header found (empty, truncated or binary?)")]
    NotAMessage,
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// What parsing needs to know about us.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// `bounces.address`: tags are looked for on this address only. Without
    /// it, any `local+tag@domain` whose tag looks like ours is taken (and
    /// verified later, like any other).
    pub bounce_address: Option<BounceAddress>,
}

/// Parses one report.
pub fn parse(raw: &[u8], options: &ParseOptions) -> Result<Vec<Finding>, ParseError> {
    let message = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.headers().is_empty())
        .ok_or(ParseError::NotAMessage)?;
    let report_id = match message.message_id() {
        Some(id) if !id.trim().is_empty() => format!("<{}>", id.trim()),
        _ => format!("sha256:{}", hex(&Sha256::digest(raw)[..16])),
    };
    let base = Finding {
        kind: Kind::Ignored(String::new()),
        source: Source::Other,
        format: "other",
        recipient: None,
        status: None,
        diagnostic: None,
        verp_tag: envelope_tag(&message, options),
        original_message_id: None,
        report_id,
    };
    let root_type = message.content_type();
    if let Some(ct) = root_type
        && ct.ctype().eq_ignore_ascii_case("multipart")
    {
        if ct.attribute("boundary").is_none_or(|b| b.trim().is_empty()) {
            return Err(ParseError::Malformed(format!(
                "Content-Type multipart/{} has no boundary parameter, so its parts cannot be found",
                ct.subtype().unwrap_or("?")
            )));
        }
        if message.root_part().sub_parts().is_none_or(|p| p.is_empty()) {
            return Err(ParseError::Malformed(format!(
                "multipart/{} message whose boundary `{}` never occurs: no part found",
                ct.subtype().unwrap_or("?"),
                ct.attribute("boundary").unwrap_or_default()
            )));
        }
        if ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        {
            let report_type = ct
                .attribute("report-type")
                .unwrap_or("")
                .to_ascii_lowercase();
            match report_type.as_str() {
                "delivery-status" | "global-delivery-status" => {
                    return dsn(&message, base);
                }
                "feedback-report" => return arf(&message, base),
                _ => {
                    // Some senders get the report-type wrong; the parts
                    // themselves say what the report is.
                    if find_part(&message, &["delivery-status", "global-delivery-status"]).is_some()
                    {
                        return dsn(&message, base);
                    }
                    if find_part(&message, &["feedback-report"]).is_some() {
                        return arf(&message, base);
                    }
                }
            }
        }
    }
    let text = body_text(&message);
    if let Some(findings) = text_bounce(&message, &text, &base) {
        return Ok(findings);
    }
    if let Some(reason) = auto_reply(&message, &text) {
        return Ok(vec![Finding {
            kind: Kind::Ignored(reason),
            format: "auto-reply",
            ..base
        }]);
    }
    Ok(vec![Finding {
        kind: Kind::Ignored("not a bounce, complaint or auto-reply that tidings knows".into()),
        ..base
    }])
}

// ------------------------------------------------------------------ RFC 3464

fn dsn(message: &Message<'_>, base: Finding) -> Result<Vec<Finding>, ParseError> {
    let part =
        find_part(message, &["delivery-status", "global-delivery-status"]).ok_or_else(|| {
            ParseError::Malformed(
                "multipart/report of type delivery-status without a message/delivery-status part"
                    .into(),
            )
        })?;
    let body = String::from_utf8_lossy(part);
    let blocks = field_blocks(&body);
    let per_message = blocks.first().filter(|b| !b.iter().any(is_recipient_field));
    let mut base = Finding {
        source: Source::Dsn,
        format: "rfc3464",
        original_message_id: quoted_message_id(message),
        ..base
    };
    if base.verp_tag.is_none() {
        // Postfix names the envelope sender in its per-message fields.
        base.verp_tag = per_message
            .and_then(|b| field(b, "x-postfix-sender"))
            .and_then(|v| tag_in(strip_type(v), None));
    }
    if base.verp_tag.is_none() {
        base.verp_tag = quoted_return_path_tag(message);
    }
    let mut findings = Vec::new();
    for block in blocks.iter().filter(|b| b.iter().any(is_recipient_field)) {
        let recipient = field(block, "original-recipient")
            .or_else(|| field(block, "final-recipient"))
            .map(|v| strip_type(v).trim_matches(['<', '>']).to_string())
            .filter(|a| a.contains('@'));
        let status = field(block, "status").and_then(status_code);
        let diagnostic = field(block, "diagnostic-code").map(|d| strip_type(d).to_string());
        let action = field(block, "action")
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let class = status.as_deref().and_then(|s| s.chars().next());
        let kind = match action.as_str() {
            "failed" => match class {
                Some('4') => Kind::Soft,
                _ => Kind::Hard,
            },
            "delayed" => {
                Kind::Ignored("delivery delayed (Action: delayed): still being tried".into())
            }
            "delivered" | "relayed" | "expanded" => {
                Kind::Ignored(format!("a success notice (Action: {action})"))
            }
            "" => {
                return Err(ParseError::Malformed(
                    "a recipient in the delivery-status part has no Action field".into(),
                ));
            }
            other => Kind::Ignored(format!("unknown Action `{other}`")),
        };
        findings.push(Finding {
            kind,
            recipient,
            status,
            diagnostic,
            ..base.clone()
        });
    }
    if findings.is_empty() {
        return Err(ParseError::Malformed(
            "the delivery-status part names no recipient (no Final-Recipient field)".into(),
        ));
    }
    Ok(findings)
}

fn is_recipient_field(f: &(String, String)) -> bool {
    f.0 == "final-recipient" || f.0 == "original-recipient"
}

// ------------------------------------------------------------------ RFC 5965

fn arf(message: &Message<'_>, base: Finding) -> Result<Vec<Finding>, ParseError> {
    let part = find_part(message, &["feedback-report"]).ok_or_else(|| {
        ParseError::Malformed(
            "multipart/report of type feedback-report without a message/feedback-report part"
                .into(),
        )
    })?;
    let body = String::from_utf8_lossy(part);
    let fields: Vec<(String, String)> = field_blocks(&body).into_iter().flatten().collect();
    let feedback_type = field(&fields, "feedback-type")
        .map(|t| t.trim().to_ascii_lowercase())
        .ok_or_else(|| {
            ParseError::Malformed("the feedback-report part has no Feedback-Type field".into())
        })?;
    let quoted = quoted_message(message);
    let recipient = field(&fields, "original-rcpt-to")
        .map(|v| v.trim().trim_matches(['<', '>']).to_string())
        .or_else(|| {
            quoted
                .as_ref()
                .and_then(|q| q.to().and_then(|a| a.first()))
                .and_then(|a| a.address.as_deref().map(str::to_string))
        })
        .filter(|a| a.contains('@'));
    let verp_tag = field(&fields, "original-mail-from")
        .and_then(|v| tag_in(v, None))
        .or_else(|| quoted_return_path_tag(message))
        .or(base.verp_tag.clone());
    let kind = match feedback_type.as_str() {
        "abuse" | "fraud" => Kind::Complaint,
        other => Kind::Ignored(format!(
            "feedback report of type `{other}`, not a complaint about our mail"
        )),
    };
    Ok(vec![Finding {
        kind,
        source: Source::Arf,
        format: "arf",
        recipient,
        diagnostic: Some(format!("Feedback-Type: {feedback_type}")),
        verp_tag,
        original_message_id: quoted
            .as_ref()
            .and_then(|q| q.message_id())
            .map(|id| format!("<{id}>")),
        ..base
    }])
}

// ------------------------------------------------------- plain-text bounces

/// The non-standard bounces that come as prose. Recognised only from a
/// mailer-daemon sender or a bounce subject *and* a known phrase, so a
/// person's reply that quotes a bounce is not one.
fn text_bounce(message: &Message<'_>, text: &str, base: &Finding) -> Option<Vec<Finding>> {
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    let subject = message.subject().unwrap_or("").to_ascii_lowercase();
    let daemon = [
        "mailer-daemon",
        "postmaster",
        "mail delivery",
        "microsoftexchange",
    ]
    .iter()
    .any(|d| from.contains(d))
        || message.header_raw("X-Failed-Recipients").is_some();
    let bounce_subject = [
        "undeliverable",
        "undelivered mail",
        "delivery status notification",
        "failure notice",
        "mail delivery failed",
        "returned mail",
        "delivery failure",
        "non-delivery",
    ]
    .iter()
    .any(|s| subject.contains(s));
    if !(daemon || bounce_subject) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let base = Finding {
        source: Source::Dsn,
        original_message_id: quoted_message_id(message).or_else(|| message_id_in_text(text)),
        ..base.clone()
    };
    let failed_header: Vec<String> = message
        .header_raw("X-Failed-Recipients")
        .map(addresses_in)
        .unwrap_or_default();

    // A warning that the server still tries is no bounce (yet).
    let delayed = !lower.contains("permanent")
        && [
            "has been delayed",
            "will retry",
            "still trying",
            "will continue trying",
            "temporary error",
        ]
        .iter()
        .any(|p| lower.contains(p));
    let (format, recipients) = if lower.contains("this is the qmail-send program") {
        ("qmail", qmail_recipients(text))
    } else if lower.contains("delivery to the following recipient failed permanently")
        || lower.contains("delivery to the following recipient has been delayed")
        || lower.contains("message wasn't delivered to")
        || lower.contains("message wasn\u{2019}t delivered to")
        || lower.contains("message was not delivered to")
    {
        ("gmail", gmail_recipients(text))
    } else if lower.contains("delivery has failed to these recipients")
        || lower.contains("your message to") && lower.contains("couldn't be delivered")
        || lower.contains("remote server returned")
    {
        ("exchange", exchange_recipients(text))
    } else if daemon
        && (lower.contains("could not be delivered")
            || lower.contains("undeliverable")
            || lower.contains("delivery failed")
            || lower.contains("permanent error")
            || lower.contains("user unknown"))
    {
        ("text", Vec::new())
    } else {
        return None;
    };
    let mut recipients = recipients;
    if recipients.is_empty() {
        recipients = failed_header.clone();
    }
    let recipients: Vec<String> = recipients
        .into_iter()
        .filter(|a| !is_ours(a, &from))
        .collect();
    let status = status_in(text);
    let diagnostic = diagnostic_line(text, status.as_deref());
    let kind = if delayed {
        Kind::Ignored("delivery delayed: the server is still trying".into())
    } else {
        match status.as_deref().and_then(|s| s.chars().next()) {
            Some('4') => Kind::Soft,
            _ => Kind::Hard,
        }
    };
    let one = |recipient: Option<String>| Finding {
        kind: kind.clone(),
        format,
        recipient,
        status: status.clone(),
        diagnostic: diagnostic.clone(),
        ..base.clone()
    };
    Some(if recipients.is_empty() {
        vec![one(None)]
    } else {
        recipients.into_iter().map(|r| one(Some(r))).collect()
    })
}

/// qmail: `<address>:` on a line of its own, the reason below.
fn qmail_recipients(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix('<')
                .and_then(|r| r.strip_suffix(">:"))
                .filter(|a| a.contains('@') && !a.contains(' '))
                .map(str::to_string)
        })
        .collect()
}

/// Gmail: the address indented below "failed permanently:", or in "wasn't
/// delivered to ADDRESS because".
fn gmail_recipients(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut take_next = false;
    for line in text.lines() {
        let l = line.trim();
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("delivery to the following recipient") {
            take_next = true;
            continue;
        }
        if take_next && !l.is_empty() {
            out.extend(addresses_in(l));
            take_next = false;
        }
        for marker in ["delivered to ", "wasn\u{2019}t delivered to "] {
            if let Some(i) = lower.find(marker)
                && (lower.contains("wasn't")
                    || lower.contains("wasn\u{2019}t")
                    || lower.contains("not delivered"))
            {
                let rest = &l[i + marker.len()..];
                out.extend(addresses_in(rest.split_whitespace().next().unwrap_or("")));
            }
        }
    }
    dedup(out)
}

/// Exchange: the addresses listed under "Delivery has failed to these
/// recipients or groups:", else those on a line before "Remote Server
/// returned".
fn exchange_recipients(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut listing = false;
    let mut previous = String::new();
    for line in text.lines() {
        let l = line.trim();
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("delivery has failed to these recipients") {
            listing = true;
            continue;
        }
        if listing {
            if l.is_empty() && !out.is_empty() {
                listing = false;
            } else if let Some(a) = addresses_in(l).into_iter().next() {
                out.push(a);
            }
        }
        if lower.starts_with("remote server returned") && out.is_empty() {
            out.extend(addresses_in(&previous));
        }
        if !l.is_empty() {
            previous = l.to_string();
        }
        if let Some(rest) = lower.strip_prefix("your message to ")
            && lower.contains("couldn't be delivered")
        {
            out.extend(addresses_in(rest.split_whitespace().next().unwrap_or("")));
        }
    }
    dedup(out)
}

/// Whether an address in a bounce's text is our own (the bounce or sender
/// address), not the recipient.
fn is_ours(address: &str, from: &str) -> bool {
    let a = address.to_ascii_lowercase();
    let tagged = a
        .rsplit_once('@')
        .and_then(|(local, _)| local.split_once('+'))
        .is_some_and(|(_, tag)| looks_like_tag(tag));
    a == from || a.starts_with("mailer-daemon@") || a.starts_with("postmaster@") || tagged
}

// ------------------------------------------------------------ auto-replies

/// Why a message is an auto-reply or challenge, if it is one.
fn auto_reply(message: &Message<'_>, text: &str) -> Option<String> {
    let raw = |name: &str| message.header_raw(name).map(|v| v.trim().to_string());
    if let Some(v) = raw("Auto-Submitted")
        && !v.eq_ignore_ascii_case("no")
    {
        return Some(format!("an automatic reply (Auto-Submitted: {v})"));
    }
    for h in ["X-Autoreply", "X-Autorespond", "X-Autoresponder"] {
        if raw(h).is_some() {
            return Some(format!("an automatic reply ({h})"));
        }
    }
    if let Some(p) = raw("Precedence")
        && matches!(
            p.to_ascii_lowercase().as_str(),
            "auto_reply" | "bulk" | "junk" | "list"
        )
    {
        return Some(format!("an automatic reply (Precedence: {p})"));
    }
    let subject = message.subject().unwrap_or("").to_ascii_lowercase();
    for s in [
        "out of office",
        "out of the office",
        "automatic reply",
        "auto reply",
        "autoreply",
        "auto:",
        "abwesenheitsnotiz",
        "réponse automatique",
        "away from my desk",
        "on vacation",
    ] {
        if subject.contains(s) {
            return Some(format!("an automatic reply (subject says `{s}`)"));
        }
    }
    let lower = text.to_ascii_lowercase();
    let challenge = [
        "please confirm that you are a human",
        "verify that you are a human",
        "to have your message delivered, please",
        "i am protected by",
        "i'm protected by",
        "confirm your email",
        "sender verification",
    ];
    if raw("X-Boxbe-Id").is_some()
        || subject.contains("please confirm")
        || subject.contains("verification required")
        || challenge.iter().any(|c| lower.contains(c))
    {
        return Some("a challenge-response request (we never answer those)".into());
    }
    if lower.contains("out of the office") || lower.contains("out of office") {
        return Some("an automatic reply (out of office)".into());
    }
    None
}

// ------------------------------------------------------------------ helpers

/// The body of the first part whose content type is `message/<sub>` for
/// one of `subtypes` (decoded).
fn find_part<'a>(message: &'a Message<'a>, subtypes: &[&str]) -> Option<&'a [u8]> {
    message.parts.iter().find_map(|p| {
        let ct = p.content_type()?;
        let st = ct.subtype()?;
        (ct.ctype().eq_ignore_ascii_case("message")
            && subtypes.iter().any(|s| st.eq_ignore_ascii_case(s)))
        .then(|| p.contents())
    })
}

/// The quoted original: a `message/rfc822` part, or the headers of a
/// `text/rfc822-headers` part.
fn quoted_message<'a>(message: &'a Message<'a>) -> Option<Cow<'a, Message<'a>>> {
    for p in &message.parts {
        if let PartType::Message(m) = &p.body {
            return Some(Cow::Borrowed(m));
        }
        let Some(ct) = p.content_type() else { continue };
        let is_headers = ct.subtype().is_some_and(|s| {
            s.eq_ignore_ascii_case("rfc822-headers") || s.eq_ignore_ascii_case("global-headers")
        });
        if is_headers {
            return MessageParser::default()
                .parse_headers(p.contents())
                .map(|m| Cow::Owned(m.into_owned()));
        }
    }
    None
}

fn quoted_message_id(message: &Message<'_>) -> Option<String> {
    quoted_message(message)
        .as_ref()
        .and_then(|q| q.message_id())
        .map(|id| format!("<{id}>"))
}

fn quoted_return_path_tag(message: &Message<'_>) -> Option<String> {
    let q = quoted_message(message)?;
    let rp = q.header_raw("Return-Path")?;
    tag_in(rp, None)
}

/// A `Message-ID: <…>` line quoted in a plain-text bounce.
fn message_id_in_text(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim_start_matches(['>', ' ']);
        let (name, value) = l.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("message-id") {
            return None;
        }
        let v = value.trim();
        let start = v.find('<')?;
        let end = v[start..].find('>')? + start;
        Some(v[start..=end].to_string())
    })
}

/// The VERP tag of the address the report was delivered to.
fn envelope_tag(message: &Message<'_>, options: &ParseOptions) -> Option<String> {
    let bounce = options.bounce_address.as_ref();
    for name in [
        "Delivered-To",
        "X-Original-To",
        "Envelope-To",
        "X-Envelope-To",
        "X-Rcpt-To",
        "To",
        "Cc",
    ] {
        for h in message
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
        {
            let raw = &message.raw_message()[h.offset_start() as usize..h.offset_end() as usize];
            let value = String::from_utf8_lossy(raw);
            if let Some(tag) = tag_in(&value, bounce) {
                return Some(tag);
            }
        }
    }
    None
}

/// The first tag in `text`'s addresses: on `bounce` when given, else on
/// any address whose tag looks like ours.
fn tag_in(text: &str, bounce: Option<&BounceAddress>) -> Option<String> {
    addresses_in(text).into_iter().find_map(|a| match bounce {
        Some(b) => b.tag_of(&a).map(str::to_string),
        None => {
            let local = a.rsplit_once('@')?.0;
            let tag = local.split_once('+')?.1;
            looks_like_tag(tag).then(|| tag.to_string())
        }
    })
}

fn looks_like_tag(tag: &str) -> bool {
    (24..=MAX_TAG_LEN).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
}

/// Every `local@domain` in free text (angle brackets, `mailto:`, quotes
/// and trailing punctuation stripped).
fn addresses_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | ',' | ';' | '(' | ')' | '"' | '\'' | '[' | ']'
            )
    }) {
        let w = word.strip_prefix("mailto:").unwrap_or(word);
        let w = w.trim_matches(|c: char| matches!(c, '.' | ':' | '!' | '?'));
        let Some((local, domain)) = w.rsplit_once('@') else {
            continue;
        };
        if local.is_empty()
            || !domain.contains('.')
            || domain.starts_with('.')
            || !domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        {
            continue;
        }
        out.push(w.to_string());
    }
    dedup(out)
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for a in v {
        if !out.iter().any(|b| b.eq_ignore_ascii_case(&a)) {
            out.push(a);
        }
    }
    out
}

/// Header blocks separated by blank lines; names lowercased, folded lines
/// joined, lines that are no field skipped.
fn field_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = block.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `rfc822; a@b` -> `a@b` (the address or diagnostic type dropped).
fn strip_type(value: &str) -> &str {
    match value.split_once(';') {
        Some((t, rest)) if !t.contains(['@', ' ']) => rest.trim(),
        _ => value.trim(),
    }
}

/// The first `c.d.d` enhanced status code (class 2, 4 or 5) in `text`
/// (also what a webhook's words carry).
pub(crate) fn status_code(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|w| w.trim_matches('.'))
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && (1..=3).contains(&parts[1].len())
                && (1..=3).contains(&parts[2].len())
                && parts[1..]
                    .iter()
                    .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// A status in prose: the first of class 4 or 5 (`#5.1.1`, `550 5.1.1`),
/// else one from a bare SMTP reply code (`550 ` -> 5.0.0).
fn status_in(text: &str) -> Option<String> {
    if let Some(s) = text
        .lines()
        .filter_map(status_code)
        .find(|s| s.starts_with('4') || s.starts_with('5'))
    {
        return Some(s);
    }
    text.split_whitespace().find_map(|w| {
        let w = w.trim_matches(|c: char| !c.is_ascii_digit());
        (w.len() == 3
            && (w.starts_with('4') || w.starts_with('5'))
            && w.bytes().all(|b| b.is_ascii_digit())
            && w.as_bytes()[1] <= b'5')
            .then(|| format!("{}.0.0", &w[..1]))
    })
}

/// The line of a prose bounce that carries its status, as the diagnostic.
fn diagnostic_line(text: &str, status: Option<&str>) -> Option<String> {
    let status = status?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.contains(status) && !l.is_empty())
        .or_else(|| {
            let code = &status[..1];
            text.lines().map(str::trim).find(|l| l.starts_with(code))
        })?;
    let mut l = line.to_string();
    if l.len() > 300 {
        let mut cut = 300;
        while !l.is_char_boundary(cut) {
            cut -= 1;
        }
        l.truncate(cut);
    }
    Some(l)
}

/// All text parts, joined (a bounce's words may be in any of them).
fn body_text(message: &Message<'_>) -> String {
    let mut out = String::new();
    for i in 0..message.text_body_count().min(4) {
        if let Some(t) = message.body_text(i) {
            out.push_str(&t);
            out.push('\n');
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status_code("5.1.1"), Some("5.1.1".into()));
        assert_eq!(
            status_code("smtp; 550 5.1.1 <a@b>: no"),
            Some("5.1.1".into())
        );
        assert_eq!(status_code("4.2.2 (mailbox full)"), Some("4.2.2".into()));
        assert_eq!(status_code("1.2.3.4"), None);
        assert_eq!(
            status_in("Sorry, no mailbox here by that name. (#5.1.1)"),
            Some("5.1.1".into())
        );
        assert_eq!(status_in("said: 550 user unknown"), Some("5.0.0".into()));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            addresses_in("To: \"Ana\" <ana@example.org>, mailto:bo@x.org."),
            vec!["ana@example.org", "bo@x.org"]
        );
        assert!(addresses_in("no address @ here").is_empty());
    }

    #[test]
    fn folded_fields() {
        let b = field_blocks(
            "Reporting-MTA: dns; a\n\nFinal-Recipient: rfc822; x@y.z\nDiagnostic-Code: smtp; 550\n  5.1.1 gone\n",
        );
        assert_eq!(b.len(), 2);
        assert_eq!(
            field(&b[1], "diagnostic-code"),
            Some("smtp; 550 5.1.1 gone")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [&b""[..], b"\x00\x01\x02", b"\n\n\n", &[0xff; 100]] {
            let _ = parse(raw, &ParseOptions::default());
        }
        assert_eq!(
            parse(b"", &ParseOptions::default()),
            Err(ParseError::NotAMessage)
        );
    }
}
