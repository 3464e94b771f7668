//! Provider webhooks: bounces and complaints reported over HTTP by the
//! relay (Amazon SES through SNS, Postmark, Mailgun, or anything that can
//! send the generic JSON with an HMAC). Each request is authenticated
//! first (an SNS signature, basic auth, an HMAC); anything that does not
//! verify is a 401 and changes nothing. What a verified report says goes
//! through the store's `learn`, the same policy as a DSN read from the
//! bounce mailbox, idempotent per (provider event id, address), so a
//! provider's retry changes nothing.
//!
//! An endpoint exists only when its `[webhooks.*]` table is configured;
//! the others fall through to the 404 page. Nothing here logs an address
//! or a secret: the access log gets an outcome word and a count.

pub mod providers;
pub mod sns;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{AppState, LogNote, Note, log_error};
use crate::config::{Config, Secret};
use crate::store::{Action, Kind, Learned};

/// An SNS message is at most 256 KiB; Postmark's and Mailgun's events
/// carry headers. The rest of `serve` keeps its 8 KiB.
pub const WEBHOOK_BODY_LIMIT: usize = 256 * 1024;

/// The configured endpoints and their keys.
pub struct Webhooks {
    pub(crate) ses: Option<sns::Ses>,
    pub(crate) postmark: Option<providers::Postmark>,
    pub(crate) mailgun: Option<providers::Mailgun>,
    pub(crate) generic: Option<Secret>,
    soft_limit: u32,
}

impl Webhooks {
    /// The endpoints `config` turns on. An endpoint whose secret is not
    /// in the environment is an error (the server does not start) rather
    /// than an endpoint that silently refuses everything.
    pub fn from_config(config: &Config) -> Result<Webhooks, String> {
        use crate::config::{
            ENV_WEBHOOKS_MAILGUN_KEY, ENV_WEBHOOKS_POSTMARK_PASSWORD, ENV_WEBHOOKS_SECRET,
        };
        let w = &config.webhooks;
        let s = &config.secrets;
        let need = |secret: &Option<Secret>, table: &str, var: &str| {
            secret
                .clone()
                .filter(|v| !v.expose().is_empty())
                .ok_or_else(|| format!("[webhooks.{table}] is configured but {var} is not set"))
        };
        let ses = match &w.ses {
            Some(c) => Some(sns::Ses::new(c, &config.base_dir())?),
            None => None,
        };
        let postmark = match &w.postmark {
            Some(c) => Some(providers::Postmark {
                username: c.username.clone(),
                password: need(
                    &s.webhooks_postmark_password,
                    "postmark",
                    ENV_WEBHOOKS_POSTMARK_PASSWORD,
                )?,
            }),
            None => None,
        };
        let mailgun = match &w.mailgun {
            Some(c) => Some(providers::Mailgun::new(
                need(&s.webhooks_mailgun_key, "mailgun", ENV_WEBHOOKS_MAILGUN_KEY)?,
                c.max_age.0,
            )),
            None => None,
        };
        let generic = match &w.generic {
            Some(_) => {
                let key = need(&s.webhooks_secret, "generic", ENV_WEBHOOKS_SECRET)?;
                // The key is all that stands between anyone and the
                // subscriber list's statuses.
                if key.expose().chars().count() < 16 {
                    return Err(format!(
                        "{ENV_WEBHOOKS_SECRET} is too short: use at least 16 random characters, e.g. `openssl rand -hex 32`"
                    ));
                }
                Some(key)
            }
            None => None,
        };
        Ok(Webhooks {
            ses,
            postmark,
            mailgun,
            generic,
            soft_limit: config.bounces.soft_limit,
        })
    }

    /// Which endpoints are on, for the start-up line.
    pub fn enabled(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        if self.ses.is_some() {
            on.push("ses");
        }
        if self.postmark.is_some() {
            on.push("postmark");
        }
        if self.mailgun.is_some() {
            on.push("mailgun");
        }
        if self.generic.is_some() {
            on.push("generic");
        }
        on
    }
}

/// The routes of the configured endpoints, with their own body limit.
pub fn routes(webhooks: &Webhooks) -> Router<AppState> {
    let mut r = Router::new();
    if webhooks.ses.is_some() {
        r = r.route("/webhooks/ses", post(sns::handle));
    }
    if webhooks.postmark.is_some() {
        r = r.route("/webhooks/postmark", post(providers::postmark));
    }
    if webhooks.mailgun.is_some() {
        r = r.route("/webhooks/mailgun", post(providers::mailgun));
    }
    if webhooks.generic.is_some() {
        r = r.route("/webhooks/generic", post(providers::generic));
    }
    r.layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
}

/// One finding of a verified report, before the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `<provider>:<the provider's event id>`.
    pub report_id: String,
    pub email: String,
    pub kind: Kind,
    pub status: String,
    pub diagnostic: String,
    /// Our Message-ID of the message it is about, if the provider says.
    pub message_id: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Authentication failed: 401.
    Unauthorized(String),
    /// The body is not what the provider documents: 400.
    Malformed(String),
    /// Our side failed (a certificate could not be fetched, …): 502.
    Upstream(String),
}

impl Refusal {
    pub fn response(self) -> Response {
        let (status, outcome, msg) = match self {
            Refusal::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "refused", m),
            Refusal::Malformed(m) => (StatusCode::BAD_REQUEST, "malformed", m),
            Refusal::Upstream(m) => {
                log_error(&format!("webhook: {m}"));
                (StatusCode::BAD_GATEWAY, "upstream-failed", m)
            }
        };
        text(status, &msg).note(LogNote::outcome(outcome))
    }
}

fn text(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

/// Applies verified findings; 200 with `{"received":N,"changed":M}`, or
/// 503 when the store fails (the provider retries; what was learned
/// before the failure is not learned twice).
pub(crate) async fn learn(state: &AppState, source: &str, reports: Vec<Report>) -> Response {
    let mut changed = 0usize;
    let received = reports.len();
    for r in reports {
        let campaign = match &r.message_id {
            Some(id) => match state.store.recipient_of(id, Some(&r.email)).await {
                Ok(found) => found.map(|(c, _)| c),
                Err(e) => return store_failed(e),
            },
            None => None,
        };
        let learned = Learned {
            report_id: r.report_id,
            email: r.email,
            kind: r.kind,
            status: r.status,
            diagnostic: r.diagnostic,
            campaign,
            source: source.to_string(),
        };
        match state.store.learn(&learned, state.webhooks.soft_limit).await {
            Ok(Action::Repeat | Action::AlreadyBlocked) => {}
            Ok(_) => changed += 1,
            Err(e) => return store_failed(e),
        }
    }
    let outcome = if changed > 0 { "learned" } else { "unchanged" };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"received\":{received},\"changed\":{changed}}}\n"),
    )
        .into_response()
        .note(LogNote::counted(outcome, received))
}

fn store_failed(e: impl std::fmt::Display) -> Response {
    log_error(&format!("webhook: the store failed: {e}"));
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "store unavailable, retry later",
    )
    .note(LogNote::outcome("store-failed"))
}

/// An address as a provider reports it: trimmed, one `@`, no spaces or
/// controls; else the finding is malformed.
pub(crate) fn address(raw: &str) -> Result<String, Refusal> {
    let a = raw.trim();
    let ok = a.len() <= 320
        && a.split('@').count() == 2
        && !a.starts_with('@')
        && !a.ends_with('@')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if ok {
        Ok(a.to_string())
    } else {
        Err(Refusal::Malformed(
            "a recipient is not an email address".into(),
        ))
    }
}

/// The first enhanced status code (`5.1.1`) in a server's words.
pub(crate) fn enhanced_status(text: &str) -> Option<String> {
    crate::bounces::parse::status_code(text)
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `<id>` as our journal stores it, from `id` or `<id>`.
pub(crate) fn bracketed(id: &str) -> Option<String> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    (!id.is_empty() && !id.contains(['<', '>', ' '])).then(|| format!("<{id}>"))
}

/// A header's value, if it is valid text.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The body as JSON, or a 400 saying why not.
pub(crate) fn json(body: &Bytes) -> Result<serde_json::Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed(format!("the body is not JSON ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_found_in_words() {
        assert_eq!(
            enhanced_status("smtp; 550 5.1.1 <x@y> user unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("452 4.2.2 Mailbox full.").as_deref(),
            Some("4.2.2")
        );
        assert_eq!(enhanced_status("version 1.2.3 of 550"), None);
        assert_eq!(enhanced_status(""), None);
    }

    #[test]
    fn addresses_and_message_ids() {
        assert_eq!(address(" a@b.org ").unwrap(), "a@b.org");
        for bad in ["", "a", "a@b@c", "@b", "a b@c", "<a@b>"] {
            assert!(
                matches!(address(bad), Err(Refusal::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(bracketed("x@y").as_deref(), Some("<x@y>"));
        assert_eq!(bracketed("<x@y>").as_deref(), Some("<x@y>"));
        assert_eq!(bracketed("  "), None);
    }
}
