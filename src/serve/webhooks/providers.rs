//! Postmark (basic auth), Mailgun (HMAC of timestamp and token, fresh and
//! used once) and the generic endpoint (HMAC of the raw body).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{
    Refusal, Report, address, bracketed, enhanced_status, header_str, json, learn, unix_now,
};
use crate::config::Secret;
use crate::serve::AppState;
use crate::store::Kind;

type HmacSha256 = Hmac<Sha256>;

// ------------------------------------------------------------ Postmark

pub struct Postmark {
    pub username: String,
    pub password: Secret,
}

impl Postmark {
    /// `Authorization: Basic …` against the configured pair, compared in
    /// constant time (both halves always compared).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = header_str(headers, "authorization")
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
        else {
            return false;
        };
        let Some(colon) = given.iter().position(|&b| b == b':') else {
            return false;
        };
        let (user, pass) = (&given[..colon], &given[colon + 1..]);
        let user_ok = ct_eq(user, self.username.as_bytes());
        let pass_ok = ct_eq(pass, self.password.expose().as_bytes());
        user_ok & pass_ok
    }
}

/// Constant time in the contents (the lengths of our own credentials are
/// no secret worth a hash here).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

pub async fn postmark(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(pm) = &state.webhooks.postmark else {
        return super::super::not_found(State(state)).await;
    };
    if !pm.authorized(&headers) {
        return Refusal::Unauthorized("bad or missing basic auth".into()).response();
    }
    match postmark_reports(&body) {
        Ok(reports) => learn(&state, "webhook:postmark", reports).await,
        Err(r) => r.response(),
    }
}

/// A Postmark Bounce or SpamComplaint webhook: one record, one address.
/// Other record types (Delivery, Open, …) and bounce types that say
/// nothing about the address (AutoResponder, Unsubscribe, …) are
/// received and learn nothing.
pub fn postmark_reports(body: &Bytes) -> Result<Vec<Report>, Refusal> {
    let v = json(body)?;
    let record = v["RecordType"].as_str().unwrap_or("");
    let kind = match record {
        "SpamComplaint" => Some(Kind::Complaint),
        "Bounce" => match v["Type"].as_str() {
            None => return Err(Refusal::Malformed("a Bounce without Type".into())),
            // Postmark's documented bounce types (TypeCode 1, 100000,
            // 4096, 2, 256, 512).
            Some("HardBounce" | "BadEmailAddress") => Some(Kind::Hard),
            Some("SoftBounce" | "Transient" | "DnsError") => Some(Kind::Soft),
            Some("SpamComplaint") => Some(Kind::Complaint),
            Some(_) => None,
        },
        "" => return Err(Refusal::Malformed("no RecordType".into())),
        _ => None,
    };
    let Some(kind) = kind else {
        return Ok(Vec::new());
    };
    let id = match &v["ID"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return Err(Refusal::Malformed("no ID".into())),
    };
    let email = address(
        v["Email"]
            .as_str()
            .ok_or_else(|| Refusal::Malformed("no Email".into()))?,
    )?;
    let details = v["Details"].as_str().unwrap_or("");
    let description = v["Description"].as_str().unwrap_or("");
    let diagnostic = if details.is_empty() {
        description
    } else {
        details
    };
    Ok(vec![Report {
        report_id: format!("postmark:{id}"),
        email,
        kind,
        status: enhanced_status(details).unwrap_or_default(),
        diagnostic: diagnostic.to_string(),
        // Postmark's MessageID is its own, not our Message-ID header.
        message_id: None,
    }])
}

// ------------------------------------------------------------- Mailgun

pub struct Mailgun {
    key: Secret,
    max_age: Duration,
    /// Tokens seen within `max_age`, with their timestamps. In memory
    /// only: a restart forgets them, which costs nothing since a replayed
    /// event is also the same `report_id` to the store.
    seen: Mutex<HashMap<String, u64>>,
}

impl Mailgun {
    pub fn new(key: Secret, max_age: Duration) -> Mailgun {
        Mailgun {
            key,
            max_age,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Mailgun's documented check: HMAC-SHA256 of `timestamp` followed by
    /// `token` with the webhook signing key, as hex; then freshness and a
    /// token used once.
    pub fn verify(&self, signature: &Value, now: u64) -> Result<(), Refusal> {
        let bad = |m: &str| Refusal::Unauthorized(m.to_string());
        let timestamp = match &signature["timestamp"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(bad("no signature.timestamp")),
        };
        let token = signature["token"]
            .as_str()
            .ok_or_else(|| bad("no signature.token"))?;
        let given = signature["signature"]
            .as_str()
            .and_then(hex_decode)
            .ok_or_else(|| bad("no signature.signature"))?;
        let mut mac = HmacSha256::new_from_slice(self.key.expose().as_bytes())
            .map_err(|_| bad("unusable signing key"))?;
        mac.update(timestamp.as_bytes());
        mac.update(token.as_bytes());
        mac.verify_slice(&given)
            .map_err(|_| bad("signature does not match"))?;
        let ts: u64 = timestamp
            .parse()
            .map_err(|_| bad("signature.timestamp is not a number"))?;
        let age = Duration::from_secs(now.abs_diff(ts));
        if age > self.max_age {
            return Err(bad("signature.timestamp is too old (or in the future)"));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = now.saturating_sub(self.max_age.as_secs());
        // Past the horizon a token's timestamp is refused anyway.
        seen.retain(|_, t| *t >= horizon);
        if seen.insert(token.to_string(), ts).is_some() {
            return Err(bad("signature.token was used before (a replay)"));
        }
        Ok(())
    }
}

pub async fn mailgun(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(mg) = &state.webhooks.mailgun else {
        return super::super::not_found(State(state)).await;
    };
    let v = match json(&body) {
        Ok(v) => v,
        Err(r) => return r.response(),
    };
    if let Err(r) = mg.verify(&v["signature"], unix_now()) {
        return r.response();
    }
    match mailgun_reports(&v["event-data"]) {
        Ok(reports) => learn(&state, "webhook:mailgun", reports).await,
        Err(r) => r.response(),
    }
}

/// `event-data` of a `failed` (severity permanent → hard, temporary →
/// soft) or `complained` event; other events learn nothing.
pub fn mailgun_reports(e: &Value) -> Result<Vec<Report>, Refusal> {
    if !e.is_object() {
        return Err(Refusal::Malformed("no event-data".into()));
    }
    let kind = match (e["event"].as_str(), e["severity"].as_str()) {
        (Some("failed"), Some("permanent")) => Kind::Hard,
        (Some("failed"), Some("temporary")) => Kind::Soft,
        (Some("failed"), _) => {
            return Err(Refusal::Malformed(
                "a failed event without severity permanent or temporary".into(),
            ));
        }
        (Some("complained"), _) => Kind::Complaint,
        (Some(_), _) => return Ok(Vec::new()),
        (None, _) => return Err(Refusal::Malformed("no event-data.event".into())),
    };
    let id = e["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Refusal::Malformed("no event-data.id".into()))?;
    let email = address(
        e["recipient"]
            .as_str()
            .ok_or_else(|| Refusal::Malformed("no event-data.recipient".into()))?,
    )?;
    let ds = &e["delivery-status"];
    let words = [ds["message"].as_str(), ds["description"].as_str()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let status = ds["enhanced-code"]
        .as_str()
        .map(str::to_string)
        .or_else(|| enhanced_status(&words))
        .or_else(|| ds["code"].as_u64().map(|c| c.to_string()))
        .unwrap_or_default();
    Ok(vec![Report {
        report_id: format!("mailgun:{id}"),
        email,
        kind,
        status,
        diagnostic: words,
        message_id: e["message"]["headers"]["message-id"]
            .as_str()
            .and_then(bracketed),
    }])
}

// ------------------------------------------------------------- generic

pub async fn generic(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = &state.webhooks.generic else {
        return super::super::not_found(State(state)).await;
    };
    if let Err(r) = verify_generic(key, header_str(&headers, "x-tidings-signature"), &body) {
        return r.response();
    }
    match generic_reports(&body) {
        Ok(reports) => learn(&state, "webhook:generic", reports).await,
        Err(r) => r.response(),
    }
}

/// `X-Tidings-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
pub fn verify_generic(key: &Secret, header: Option<&str>, body: &[u8]) -> Result<(), Refusal> {
    let bad = |m: &str| Refusal::Unauthorized(m.to_string());
    let given = header
        .ok_or_else(|| bad("no X-Tidings-Signature header"))?
        .trim()
        .strip_prefix("sha256=")
        .and_then(hex_decode)
        .ok_or_else(|| bad("X-Tidings-Signature is not sha256=<hex>"))?;
    let mut mac =
        HmacSha256::new_from_slice(key.expose().as_bytes()).map_err(|_| bad("unusable key"))?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| bad("signature does not match"))
}

/// `{"id", "email", "kind": "hard|soft|complaint", "status",
/// "diagnostic", "message_id"}`; `status`, `diagnostic` and `message_id`
/// may be left out.
pub fn generic_reports(body: &Bytes) -> Result<Vec<Report>, Refusal> {
    let v = json(body)?;
    let field = |name: &str| -> Result<&str, Refusal> {
        v[name]
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Refusal::Malformed(format!("no `{name}` (a string)")))
    };
    let id = field("id")?;
    let email = address(field("email")?)?;
    let kind: Kind = field("kind")?
        .parse()
        .map_err(|_| Refusal::Malformed("`kind` must be hard, soft or complaint".into()))?;
    let opt = |name: &str| v[name].as_str().unwrap_or("").to_string();
    Ok(vec![Report {
        report_id: format!("generic:{id}"),
        email,
        kind,
        status: opt("status"),
        diagnostic: opt("diagnostic"),
        message_id: v["message_id"].as_str().and_then(bracketed),
    }])
}

// --------------------------------------------------------------- utils

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn mg_sign(key: &str, ts: u64, token: &str) -> Value {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{ts}{token}").as_bytes());
        serde_json::json!({"timestamp": ts.to_string(), "token": token,
            "signature": hex(&mac.finalize().into_bytes())})
    }

    #[test]
    fn mailgun_signature_freshness_and_replay() {
        let mg = Mailgun::new(Secret::new("key-abc"), Duration::from_secs(300));
        let now = 1_800_000_000;
        assert_eq!(mg.verify(&mg_sign("key-abc", now, "t1"), now), Ok(()));
        assert_eq!(
            mg.verify(&mg_sign("key-abc", now, "t1"), now),
            Err(Refusal::Unauthorized(
                "signature.token was used before (a replay)".into()
            ))
        );
        assert_eq!(
            mg.verify(&mg_sign("key-abc", now - 301, "t2"), now),
            Err(Refusal::Unauthorized(
                "signature.timestamp is too old (or in the future)".into()
            ))
        );
        assert_eq!(
            mg.verify(&mg_sign("other", now, "t3"), now),
            Err(Refusal::Unauthorized("signature does not match".into()))
        );
        assert_eq!(
            mg.verify(&serde_json::json!({}), now),
            Err(Refusal::Unauthorized("no signature.timestamp".into()))
        );
    }

    #[test]
    fn postmark_types() {
        let body = |t: &str| {
            Bytes::from(format!(
                r#"{{"RecordType":"Bounce","ID":42,"Type":"{t}","Email":"a@b.org","Details":"smtp;550 5.1.1 no such user"}}"#
            ))
        };
        let r = postmark_reports(&body("HardBounce")).unwrap();
        assert_eq!(r[0].kind, Kind::Hard);
        assert_eq!(r[0].report_id, "postmark:42");
        assert_eq!(r[0].status, "5.1.1");
        assert_eq!(
            postmark_reports(&body("SoftBounce")).unwrap()[0].kind,
            Kind::Soft
        );
        assert_eq!(
            postmark_reports(&body("Transient")).unwrap()[0].kind,
            Kind::Soft
        );
        assert!(postmark_reports(&body("AutoResponder")).unwrap().is_empty());
        assert_eq!(
            postmark_reports(&Bytes::from("{}")),
            Err(Refusal::Malformed("no RecordType".into()))
        );
    }

    #[test]
    fn generic_needs_the_right_hmac() {
        let key = Secret::new("0123456789abcdef0123");
        let body = br#"{"id":"1","email":"a@b.org","kind":"hard"}"#;
        let mut mac = HmacSha256::new_from_slice(key.expose().as_bytes()).unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex(&mac.finalize().into_bytes()));
        assert_eq!(verify_generic(&key, Some(&good), body), Ok(()));
        assert_eq!(
            verify_generic(&key, Some(&good), b"{}"),
            Err(Refusal::Unauthorized("signature does not match".into()))
        );
        assert_eq!(
            verify_generic(&key, None, body),
            Err(Refusal::Unauthorized(
                "no X-Tidings-Signature header".into()
            ))
        );
        assert_eq!(
            generic_reports(&Bytes::from(r#"{"id":"1","email":"a@b.org","kind":"bad"}"#)),
            Err(Refusal::Malformed(
                "`kind` must be hard, soft or complaint".into()
            ))
        );
    }
}
