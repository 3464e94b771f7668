//! Amazon SES bounce and complaint notifications, delivered by Amazon SNS
//! to `POST /webhooks/ses`.
//!
//! Trust comes from AWS's documented scheme: the message is signed
//! (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA) over a canonical
//! string of its fields, with the key of the certificate at
//! `SigningCertURL`. That URL is only trusted over https from an
//! `sns.<region>.amazonaws.com` (or `.amazonaws.com.cn`) host, whose TLS
//! certificate the public roots vouch for: that is what makes the key
//! Amazon's. A valid signature proves only that some SNS topic sent the
//! message, so the topic must also be one of `webhooks.ses.topic_arns`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{Refusal, Report, address, bracketed, learn, unix_now};
use crate::config::SesWebhook;
use crate::serve::{AppState, LogNote, Note, log_warn};
use crate::store::Kind;

/// How long fetching a certificate or confirming a subscription may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A PEM certificate is a few KiB.
const CERT_LIMIT: usize = 64 * 1024;
/// Certificates kept; SNS rotates them rarely, and only URLs on SNS hosts
/// ever get here.
const CERT_CACHE: usize = 64;

/// DER DigestInfo prefixes (RFC 8017 §9.2, note 1) for PKCS#1 v1.5.
const SHA1_PREFIX: &[u8] = &[
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];
const SHA256_PREFIX: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

pub struct Ses {
    topics: Vec<String>,
    /// TESTS ONLY (`webhooks.ses.test_cert_host`): one more `host:port`
    /// trusted for certificates and subscription URLs.
    test_host: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    /// Keys by certificate URL, with the certificate's notAfter (Unix s):
    /// an expired one is fetched again.
    certs: Mutex<HashMap<String, (RsaPublicKey, u64)>>,
}

impl Ses {
    pub fn new(c: &SesWebhook, base: &Path) -> Result<Ses, String> {
        let extra = if c.ca_file.is_empty() {
            None
        } else {
            let path = base.join(&c.ca_file);
            Some(std::fs::read(&path).map_err(|e| {
                format!(
                    "webhooks.ses.ca_file {}: cannot read it: {e}",
                    path.display()
                )
            })?)
        };
        let tls = crate::deliver::smtp_client::tls_config(extra.as_deref())
            .map_err(|e| format!("webhooks.ses.ca_file: {e}"))?;
        let test_host = (!c.test_cert_host.is_empty()).then(|| c.test_cert_host.clone());
        if let Some(h) = &test_host {
            log_warn(&format!(
                "webhooks.ses.test_cert_host is set: certificates from https://{h} are trusted; this setting is for tests only"
            ));
        }
        Ok(Ses {
            topics: c.topic_arns.clone(),
            test_host,
            tls,
            certs: Mutex::new(HashMap::new()),
        })
    }

    /// The `host[:port]` of an https URL we may fetch, if it is one.
    pub fn trusted_url<'a>(&self, url: &'a str) -> Option<&'a str> {
        trusted_url(url, self.test_host.as_deref())
    }

    /// The signing key at `url`, from the cache or fetched.
    async fn key(&self, url: &str) -> Result<RsaPublicKey, Refusal> {
        let now = unix_now();
        if let Some((k, _)) = self.lock().get(url).filter(|(_, until)| now <= *until) {
            return Ok(k.clone());
        }
        let pem = fetch(&self.tls, url, CERT_LIMIT)
            .await
            .map_err(|e| Refusal::Upstream(format!("signing certificate: {e}")))?;
        let (key, until) = public_key(&pem, now)
            .map_err(|e| Refusal::Unauthorized(format!("signing certificate not usable: {e}")))?;
        let mut certs = self.lock();
        if certs.len() >= CERT_CACHE {
            certs.clear();
        }
        certs.insert(url.to_string(), (key.clone(), until));
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RsaPublicKey, u64)>> {
        self.certs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything short of the signature's math: type, topic, version,
    /// certificate URL; then the signature with the fetched key.
    pub async fn verify(&self, m: &Value) -> Result<(), Refusal> {
        let bad = |s: &str| Refusal::Unauthorized(s.to_string());
        let kind = m["Type"].as_str().unwrap_or("");
        let topic = m["TopicArn"].as_str().unwrap_or("");
        if !self.topics.iter().any(|t| t == topic) {
            return Err(bad("TopicArn is not one of webhooks.ses.topic_arns"));
        }
        let to_sign = string_to_sign(m).ok_or_else(|| {
            bad(&format!(
                "not a signable SNS message (Type `{kind}` or a field missing)"
            ))
        })?;
        let url = m["SigningCertURL"].as_str().unwrap_or("");
        if self.trusted_url(url).is_none() {
            return Err(bad(
                "SigningCertURL is not https on an sns.<region>.amazonaws.com host",
            ));
        }
        let signature = m["Signature"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| bad("Signature is not base64"))?;
        let (scheme, digest) = match m["SignatureVersion"].as_str() {
            Some("1") => (
                Pkcs1v15Sign {
                    hash_len: Some(20),
                    prefix: SHA1_PREFIX.into(),
                },
                Sha1::digest(to_sign.as_bytes()).to_vec(),
            ),
            Some("2") => (
                Pkcs1v15Sign {
                    hash_len: Some(32),
                    prefix: SHA256_PREFIX.into(),
                },
                Sha256::digest(to_sign.as_bytes()).to_vec(),
            ),
            _ => return Err(bad("SignatureVersion is not 1 or 2")),
        };
        let key = self.key(url).await?;
        key.verify(scheme, &digest, &signature)
            .map_err(|_| bad("signature does not match"))
    }
}

/// AWS's string to sign: `Name\nvalue\n` for each field, in this order.
/// Notification: Message, MessageId, Subject (only when present),
/// Timestamp, TopicArn, Type. SubscriptionConfirmation and
/// UnsubscribeConfirmation: Message, MessageId, SubscribeURL, Timestamp,
/// Token, TopicArn, Type. `None` for another Type or a missing field.
pub fn string_to_sign(m: &Value) -> Option<String> {
    let fields: &[&str] = match m["Type"].as_str()? {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
        _ => return None,
    };
    let mut out = String::new();
    for &f in fields {
        match m.get(f) {
            Some(Value::String(v)) => {
                out.push_str(f);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
            // Only Subject may be absent (or null, as SNS sends it).
            None | Some(Value::Null) if f == "Subject" => {}
            _ => return None,
        }
    }
    Some(out)
}

/// `host[:port]` of `url` when it is `https://` on an SNS host
/// (`sns.<region>.amazonaws.com`, `….amazonaws.com.cn`), or exactly on
/// `test_host`. No user info, no other port, no other scheme.
pub fn trusted_url<'a>(url: &'a str, test_host: Option<&str>) -> Option<&'a str> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    if test_host.is_some_and(|t| t == authority) {
        return Some(authority);
    }
    let host = authority.to_ascii_lowercase();
    let region = host.strip_prefix("sns.").and_then(|h| {
        h.strip_suffix(".amazonaws.com")
            .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
    })?;
    let ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(authority)
}

/// The RSA key of a PEM certificate that is valid at `now` (Unix s), and
/// the end of its validity (Unix s).
pub fn public_key(pem: &[u8], now: u64) -> Result<(RsaPublicKey, u64), String> {
    use rsa::pkcs8::DecodePublicKey;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_cert::der::{Decode, Encode};
    let der = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no PEM certificate")?
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = x509_cert::Certificate::from_der(&der).map_err(|e| format!("not X.509: {e}"))?;
    let validity = &cert.tbs_certificate.validity;
    let until = validity.not_after.to_unix_duration().as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() || now > until {
        return Err("expired or not yet valid".into());
    }
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    let key =
        RsaPublicKey::from_public_key_der(&spki).map_err(|e| format!("not an RSA key: {e}"))?;
    Ok((key, until))
}

/// GET `url` (https, already checked) with our TLS roots; the body when
/// the answer is 200.
async fn fetch(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(tls, url, limit))
        .await
        .map_err(|_| format!("no answer within {}s", FETCH_TIMEOUT.as_secs()))?
}

async fn fetch_inner(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::rt::TokioIo;
    let rest = url.strip_prefix("https://").ok_or("not https")?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| "bad port".to_string())?)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("bad host: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP with {authority}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header("host", authority)
        .header("user-agent", concat!("tidings/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET from {authority}: {e}"))?;
    if res.status() != hyper::StatusCode::OK {
        return Err(format!("{authority} answered {}", res.status()));
    }
    let body = Limited::new(res.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("reading from {authority}: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

pub async fn handle(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(ses) = &state.webhooks.ses else {
        return super::super::not_found(State(state)).await;
    };
    let m = match super::json(&body) {
        Ok(m) => m,
        Err(r) => return r.response(),
    };
    if let Err(r) = ses.verify(&m).await {
        return r.response();
    }
    match m["Type"].as_str() {
        Some("SubscriptionConfirmation") => confirm(ses, &m).await,
        Some("Notification") => match ses_reports(&m) {
            Ok(reports) => learn(&state, "webhook:ses", reports).await,
            Err(r) => r.response(),
        },
        // UnsubscribeConfirmation: the topic let us go; nothing to learn.
        _ => {
            log_warn("webhook ses: SNS says the subscription was removed");
            super::text(axum::http::StatusCode::OK, "ok").note(LogNote::outcome("unsubscribed"))
        }
    }
}

/// Confirms a (signed) subscription by fetching its SubscribeURL, which
/// must be on an SNS host too.
async fn confirm(ses: &Ses, m: &Value) -> Response {
    let url = m["SubscribeURL"].as_str().unwrap_or("");
    if ses.trusted_url(url).is_none() {
        return Refusal::Unauthorized(
            "SubscribeURL is not https on an sns.<region>.amazonaws.com host".into(),
        )
        .response();
    }
    match fetch(&ses.tls, url, CERT_LIMIT).await {
        Ok(_) => {
            eprintln!(
                "time={} level=info msg={:?}",
                crate::serve::now(),
                format!(
                    "webhook ses: confirmed the SNS subscription to {}",
                    m["TopicArn"].as_str().unwrap_or("")
                )
            );
            super::text(axum::http::StatusCode::OK, "subscription confirmed")
                .note(LogNote::outcome("confirmed"))
        }
        Err(e) => Refusal::Upstream(format!("confirming the SNS subscription: {e}")).response(),
    }
}

/// The findings of an SES notification (the SNS `Message`, itself JSON):
/// `Bounce` (bounceType Permanent → hard, Transient and Undetermined →
/// soft, one per bouncedRecipients entry) and `Complaint` (one per
/// complainedRecipients entry, unless its feedback type is `not-spam`).
/// Both the notification (`notificationType`) and the event publishing
/// (`eventType`) shapes are read; other types learn nothing.
pub fn ses_reports(m: &Value) -> Result<Vec<Report>, Refusal> {
    let bad = |s: &str| Refusal::Malformed(s.to_string());
    let inner: Value = m["Message"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("the SNS Message is not an SES notification (JSON)"))?;
    let kind = inner["notificationType"]
        .as_str()
        .or_else(|| inner["eventType"].as_str())
        .ok_or_else(|| bad("the SES notification has no notificationType"))?;
    let mail = &inner["mail"];
    let message_id = mail["commonHeaders"]["messageId"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            mail["headers"].as_array().and_then(|hs| {
                hs.iter()
                    .find(|h| {
                        h["name"]
                            .as_str()
                            .is_some_and(|n| n.eq_ignore_ascii_case("message-id"))
                    })
                    .and_then(|h| h["value"].as_str().map(str::to_string))
            })
        })
        .and_then(|id| bracketed(&id));
    let (event, list, kind) = match kind {
        "Bounce" => {
            let b = &inner["bounce"];
            let kind = match b["bounceType"].as_str() {
                Some("Permanent") => Kind::Hard,
                // Undetermined: SES could not tell; counted, not acted on
                // at once.
                Some("Transient" | "Undetermined") => Kind::Soft,
                _ => return Err(bad("a Bounce without bounceType")),
            };
            (b, &b["bouncedRecipients"], kind)
        }
        "Complaint" => {
            let c = &inner["complaint"];
            if c["complaintFeedbackType"].as_str() == Some("not-spam") {
                return Ok(Vec::new());
            }
            (c, &c["complainedRecipients"], Kind::Complaint)
        }
        _ => return Ok(Vec::new()),
    };
    // SES's feedbackId names the event; the SNS MessageId only this copy.
    let id = event["feedbackId"]
        .as_str()
        .or_else(|| m["MessageId"].as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no feedbackId"))?;
    let recipients = list
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("no recipients in the notification"))?;
    recipients
        .iter()
        .map(|r| {
            let email = address(r["emailAddress"].as_str().unwrap_or(""))?;
            Ok(Report {
                report_id: format!("ses:{id}"),
                email,
                kind,
                status: r["status"].as_str().unwrap_or("").to_string(),
                diagnostic: r["diagnosticCode"]
                    .as_str()
                    .or_else(|| event["complaintFeedbackType"].as_str())
                    .unwrap_or("")
                    .to_string(),
                message_id: message_id.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_over_https_are_trusted_by_default() {
        let ok = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem";
        assert_eq!(trusted_url(ok, None), Some("sns.eu-west-1.amazonaws.com"));
        assert!(trusted_url("https://sns.cn-north-1.amazonaws.com.cn/x.pem", None).is_some());
        for bad in [
            // http, not https
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            // not an SNS host
            "https://evil.example.org/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.org/x.pem",
            "https://s3.amazonaws.com/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://x@sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu_west.amazonaws.com/x.pem",
            "https://127.0.0.1:8443/x.pem",
            "",
        ] {
            assert_eq!(trusted_url(bad, None), None, "{bad}");
        }
        // The test-only host is that exact authority, still over https.
        assert!(trusted_url("https://127.0.0.1:8443/x.pem", Some("127.0.0.1:8443")).is_some());
        assert!(trusted_url("http://127.0.0.1:8443/x.pem", Some("127.0.0.1:8443")).is_none());
        assert!(trusted_url("https://127.0.0.1:8444/x.pem", Some("127.0.0.1:8443")).is_none());
    }

    #[tokio::test]
    async fn the_default_config_refuses_other_cert_urls_without_fetching() {
        let c = crate::config::Config::parse(
            "[webhooks.ses]\ntopic_arns = [\"arn:aws:sns:eu-west-1:123456789012:b\"]\n",
            "t",
        )
        .unwrap();
        let ses = Ses::new(c.webhooks.ses.as_ref().unwrap(), Path::new(".")).unwrap();
        for url in [
            "https://evil.example.org/cert.pem",
            "http://sns.eu-west-1.amazonaws.com/cert.pem",
        ] {
            let m = serde_json::json!({
                "Type": "Notification", "MessageId": "1", "Message": "{}",
                "Timestamp": "2026-01-01T00:00:00.000Z",
                "TopicArn": "arn:aws:sns:eu-west-1:123456789012:b",
                "SignatureVersion": "1", "Signature": "AAAA", "SigningCertURL": url,
            });
            assert_eq!(
                ses.verify(&m).await,
                Err(Refusal::Unauthorized(
                    "SigningCertURL is not https on an sns.<region>.amazonaws.com host".into()
                )),
                "{url}"
            );
        }
        let m = serde_json::json!({"Type": "Notification", "TopicArn": "arn:aws:sns:eu-west-1:1:other"});
        assert_eq!(
            ses.verify(&m).await,
            Err(Refusal::Unauthorized(
                "TopicArn is not one of webhooks.ses.topic_arns".into()
            ))
        );
    }

    #[test]
    fn strings_to_sign_follow_aws_field_order() {
        let n = serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": "hi",
            "Timestamp": "t", "TopicArn": "a", "Subject": "s"});
        assert_eq!(
            string_to_sign(&n).unwrap(),
            "Message\nhi\nMessageId\nm\nSubject\ns\nTimestamp\nt\nTopicArn\na\nType\nNotification\n"
        );
        let mut no_subject = n.clone();
        no_subject.as_object_mut().unwrap().remove("Subject");
        assert_eq!(
            string_to_sign(&no_subject).unwrap(),
            "Message\nhi\nMessageId\nm\nTimestamp\nt\nTopicArn\na\nType\nNotification\n"
        );
        let c = serde_json::json!({"Type": "SubscriptionConfirmation", "MessageId": "m",
            "Message": "hi", "Timestamp": "t", "TopicArn": "a", "Token": "k", "SubscribeURL": "u"});
        assert_eq!(
            string_to_sign(&c).unwrap(),
            "Message\nhi\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nt\nToken\nk\nTopicArn\na\nType\nSubscriptionConfirmation\n"
        );
        assert_eq!(string_to_sign(&serde_json::json!({"Type": "Other"})), None);
    }

    #[test]
    fn ses_bounce_and_complaint() {
        let bounce = serde_json::json!({"notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "feedbackId": "f1",
                "bouncedRecipients": [{"emailAddress": "a@b.org", "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
            "mail": {"messageId": "ses-id", "commonHeaders": {"messageId": "<x@news.example.org>"}}});
        let m = serde_json::json!({"Type": "Notification", "MessageId": "sns-1",
            "Message": bounce.to_string()});
        let r = ses_reports(&m).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, Kind::Hard);
        assert_eq!(r[0].report_id, "ses:f1");
        assert_eq!(r[0].message_id.as_deref(), Some("<x@news.example.org>"));
        let complaint = serde_json::json!({"notificationType": "Complaint",
            "complaint": {"feedbackId": "f2", "complaintFeedbackType": "abuse",
                "complainedRecipients": [{"emailAddress": "c@d.org"}]}, "mail": {}});
        let m = serde_json::json!({"Message": complaint.to_string()});
        assert_eq!(ses_reports(&m).unwrap()[0].kind, Kind::Complaint);
        assert_eq!(
            ses_reports(&serde_json::json!({"Message": "not json"})),
            Err(Refusal::Malformed(
                "the SNS Message is not an SES notification (JSON)".into()
            ))
        );
    }
}
