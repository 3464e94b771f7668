//! `/u/<token>`: the signed unsubscribe links of every message.
//!
//! - `POST` with `List-Unsubscribe=One-Click` (RFC 8058, sent by mailbox
//!   providers, urlencoded or multipart): unsubscribes, answers 200, no
//!   redirect, no cookie. Source `one-click`.
//! - `GET`: a page with a button; it changes nothing (mail scanners
//!   follow links).
//! - `POST` with `action=unsubscribe` / `action=resubscribe` (the page's
//!   buttons): source `link`.
//!
//! Any defect in the token gets the same 400 page, before anything else.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::{AppState, LogNote, Note, html};
use crate::deliver::unsubscribe::Claim;
use crate::subscribers::model::{ResubscribeOutcome, UnsubscribeOutcome};

/// Longer than any token we sign (the slug is at most 200 bytes).
const MAX_TOKEN: usize = 400;

/// What a POST asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// RFC 8058 `List-Unsubscribe=One-Click`.
    OneClick,
    /// The page's Unsubscribe button.
    Unsubscribe,
    /// The page's Subscribe again button.
    Resubscribe,
}

fn verify(state: &AppState, path: Result<Path<String>, PathRejection>) -> Option<(String, Claim)> {
    let Path(token) = path.ok()?;
    if token.len() > MAX_TOKEN {
        return None;
    }
    let claim = state.signer.verify(&token).ok()?;
    Some((token, claim))
}

fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Whether a resubscribe is the page's own form, sent deliberately from
/// our origin: urlencoded (what a form sends; a script's `text/plain` is
/// not), a fresh `csrf` field made for this link, and no sign of another
/// site (`Origin`, `Sec-Fetch-Site`) where the browser gives one.
fn deliberate(state: &AppState, token: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let urlencoded = header("content-type").is_some_and(|ct| {
        ct.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    // Our public origin (behind the proxy), or the host the browser
    // asked (reached directly): either way not another site.
    let same_origin = header("origin").is_none_or(|o| {
        let o = super::origin_of(o);
        o == state.origin
            || header("host").is_some_and(|h| {
                o.split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h))
            })
    });
    let same_site = header("sec-fetch-site").is_none_or(|s| s == "same-origin" || s == "none");
    let csrf = form_urlencoded::parse(body)
        .find(|(k, _)| k == "csrf")
        .is_some_and(|(_, v)| state.signer.verify_form_token(token, &v, unix_minute()));
    urlencoded && same_origin && same_site && csrf
}

fn invalid(state: &AppState) -> Response {
    html(StatusCode::BAD_REQUEST, state.pages.invalid_link()).note(LogNote::outcome("invalid"))
}

pub async fn page(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Some((_, claim)) = verify(&state, path) else {
        return invalid(&state);
    };
    // The issue's title is a courtesy: a missing or broken file does not
    // stop an unsubscribe.
    let title = state
        .catalogue
        .info(&claim.issue)
        .ok()
        .flatten()
        .map(|i| i.title.clone());
    html(StatusCode::OK, state.pages.confirm(title.as_deref()))
        .note(LogNote::new(&claim.issue, "shown"))
}

pub async fn post(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((token, claim)) = verify(&state, path) else {
        return invalid(&state);
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(intent) = intent(content_type, &body) else {
        return html(StatusCode::BAD_REQUEST, state.pages.bad_request())
            .note(LogNote::new(&claim.issue, "bad-request"));
    };
    if intent == Intent::Resubscribe && !deliberate(&state, &token, &headers, &body) {
        return html(StatusCode::FORBIDDEN, state.pages.forbidden())
            .note(LogNote::new(&claim.issue, "forbidden"));
    }
    let csrf = state.signer.form_token(&token, unix_minute());
    let hash = hex(&claim.email_hash);
    let store = &state.store;
    let result = match intent {
        Intent::OneClick | Intent::Unsubscribe => {
            let source = if intent == Intent::OneClick {
                "one-click"
            } else {
                "link"
            };
            store
                .unsubscribe_by_hash(&hash, source)
                .await
                .map(|o| match o {
                    UnsubscribeOutcome::Unsubscribed | UnsubscribeOutcome::Suppressed => {
                        (state.pages.unsubscribed(&csrf), "unsubscribed")
                    }
                    UnsubscribeOutcome::AlreadyUnsubscribed
                    | UnsubscribeOutcome::AlreadySuppressed => {
                        (state.pages.unsubscribed(&csrf), "already")
                    }
                })
        }
        Intent::Resubscribe => store
            .resubscribe_by_hash(&hash, "link")
            .await
            .map(|o| match o {
                ResubscribeOutcome::Resubscribed => (state.pages.resubscribed(), "resubscribed"),
                ResubscribeOutcome::AlreadyActive => (state.pages.resubscribed(), "already"),
                ResubscribeOutcome::Bounced | ResubscribeOutcome::NotSelfService => {
                    (state.pages.resubscribe_refused(), "refused")
                }
                ResubscribeOutcome::NotFound => (state.pages.resubscribe_refused(), "not-found"),
            }),
    };
    match result {
        Ok((page, outcome)) => html(StatusCode::OK, page).note(LogNote::new(&claim.issue, outcome)),
        Err(e) => {
            super::log_error(&format!("unsubscribe for issue {}: {e}", claim.issue));
            html(StatusCode::SERVICE_UNAVAILABLE, state.pages.unavailable())
                .note(LogNote::new(&claim.issue, "error"))
        }
    }
}

/// Lower-case hex, as the store keeps address hashes.
fn hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Reads the POST body: `multipart/form-data` when it says so (RFC 8058
/// recommends it), else as a urlencoded form, whatever the declared type
/// (providers differ). One-click wins over a button field, since both
/// mean at least "stop".
pub fn intent(content_type: Option<&str>, body: &[u8]) -> Option<Intent> {
    let fields = match content_type.and_then(multipart_boundary) {
        Some(boundary) => multipart_fields(body, &boundary),
        None => form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    };
    let mut found = None;
    for (name, value) in &fields {
        match (name.trim(), value.trim()) {
            ("List-Unsubscribe", "One-Click") => return Some(Intent::OneClick),
            ("action", "unsubscribe") => found = Some(Intent::Unsubscribe),
            ("action", "resubscribe") if found.is_none() => found = Some(Intent::Resubscribe),
            _ => {}
        }
    }
    found
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/form-data")
    {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// The name and text of each part of a `multipart/form-data` body: the
/// little RFC 7578 that a form of short text fields needs.
fn multipart_fields(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    let body = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for part in body.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part
            .strip_prefix("\r\n")
            .or_else(|| part.strip_prefix('\n'))
            .unwrap_or(part);
        let Some((head, value)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            continue;
        };
        let name = head.lines().find_map(|line| {
            let (field, rest) = line.split_once(':')?;
            if !field.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            rest.split(';').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
            })
        });
        if let Some(name) = name {
            let value = value
                .strip_suffix("\r\n")
                .or_else(|| value.strip_suffix('\n'))
                .unwrap_or(value);
            out.push((name, value.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_bodies() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(
            intent(form, b"List-Unsubscribe=One-Click"),
            Some(Intent::OneClick)
        );
        assert_eq!(
            intent(form, b"List-Unsubscribe=One-Click\r\n"),
            Some(Intent::OneClick)
        );
        assert_eq!(
            intent(None, b"List-Unsubscribe=One-Click"),
            Some(Intent::OneClick)
        );
        assert_eq!(
            intent(form, b"action=unsubscribe"),
            Some(Intent::Unsubscribe)
        );
        assert_eq!(
            intent(form, b"action=resubscribe"),
            Some(Intent::Resubscribe)
        );
        assert_eq!(
            intent(form, b"action=resubscribe&List-Unsubscribe=One-Click"),
            Some(Intent::OneClick)
        );
        assert_eq!(
            intent(form, b"action=resubscribe&action=unsubscribe"),
            Some(Intent::Unsubscribe)
        );
        assert_eq!(intent(form, b""), None);
        assert_eq!(intent(form, b"List-Unsubscribe=Yes"), None);
        assert_eq!(intent(form, b"action=delete"), None);
    }

    #[test]
    fn multipart_bodies() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert_eq!(
            intent(Some("multipart/form-data; boundary=XyZ"), body),
            Some(Intent::OneClick)
        );
        assert_eq!(
            intent(Some("Multipart/Form-Data; boundary=\"XyZ\""), body),
            Some(Intent::OneClick)
        );
        let other = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nOne-Click\r\n--b\r\ncontent-disposition: form-data; name=action\r\n\r\nunsubscribe\r\n--b--";
        assert_eq!(
            intent(Some("multipart/form-data; boundary=b"), other),
            Some(Intent::Unsubscribe)
        );
        assert_eq!(
            intent(Some("multipart/form-data; boundary=b"), b"garbage"),
            None
        );
    }

    #[test]
    fn hex_is_lower_case() {
        let mut b = [0u8; 32];
        b[0] = 0xAB;
        b[31] = 0x01;
        let h = hex(&b);
        assert_eq!(h.len(), 64);
        assert!(h.starts_with("ab00"));
        assert!(h.ends_with("01"));
    }
}
