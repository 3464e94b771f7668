//! SMTP through lettre's async transport on tokio, with a connection pool
//! sized by `send.concurrency`. Concurrency itself is bounded by the send
//! loop: lettre's pool size caps idle connections, not sends in flight.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{DeliverError, FailureKind, Outgoing, SendError, Transport};
use crate::config::{Config, ENV_SMTP_PASSWORD, TlsMode};

pub struct SmtpTransport {
    /// Swapped for a fresh pool after a timeout (see `send`).
    inner: RwLock<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
    builder: AsyncSmtpTransportBuilder,
    /// lettre's async transport applies its timeout to connecting only; a
    /// server that stops answering mid-transaction would hang a send for
    /// good, so each message is bounded here.
    command_timeout: std::time::Duration,
    /// `host:port (mode)`, for messages.
    pub server: String,
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl SmtpTransport {
    pub fn new(config: &Config) -> Result<SmtpTransport, DeliverError> {
        let smtp = &config.smtp;
        let origin = config
            .origin
            .as_ref()
            .map_or("config".into(), |p| p.display().to_string());
        let host = smtp.host.trim();
        if host.is_empty() {
            return Err(DeliverError::Config(format!(
                "{origin}: smtp.host is not set: name your mail relay, e.g. host = \"smtp.example.org\""
            )));
        }
        if smtp.tls == TlsMode::None && !is_loopback(host) && !smtp.allow_insecure {
            return Err(DeliverError::Config(format!(
                "{origin}: smtp.tls = \"none\" sends passwords and mail in clear text to {host}: use tls = \"starttls\" or \"tls\", or set allow_insecure = true if the network path is trusted"
            )));
        }
        let tls = match smtp.tls {
            TlsMode::None => Tls::None,
            TlsMode::Starttls | TlsMode::Tls => {
                let params = TlsParameters::new(host.to_string()).map_err(|e| {
                    DeliverError::Config(format!("cannot set up TLS for {host}: {e}"))
                })?;
                if smtp.tls == TlsMode::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(smtp.port())
            .tls(tls)
            .timeout(Some(smtp.timeout()))
            .pool_config(PoolConfig::new().max_size(config.send.concurrency as u32));
        if !smtp.hello_name.is_empty() {
            builder = builder.hello_name(ClientId::Domain(smtp.hello_name.clone()));
        }
        if !smtp.username.is_empty() {
            let password = config.secrets.smtp_password.as_ref().ok_or_else(|| {
                DeliverError::Config(format!(
                    "{origin}: smtp.username is set but {ENV_SMTP_PASSWORD} is not: export the password in that variable"
                ))
            })?;
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                password.expose().to_string(),
            ));
        }
        let mode = match smtp.tls {
            TlsMode::None => "no TLS",
            TlsMode::Starttls => "STARTTLS",
            TlsMode::Tls => "TLS",
        };
        Ok(SmtpTransport {
            inner: RwLock::new(Arc::new(builder.clone().build())),
            builder,
            command_timeout: smtp.timeout(),
            server: format!("{host}:{} ({mode})", smtp.port()),
        })
    }

    fn current(&self) -> Arc<AsyncSmtpTransport<Tokio1Executor>> {
        self.inner.read().unwrap().clone()
    }

    /// Connects once (greeting, EHLO, TLS, AUTH) so that a wrong host,
    /// port, certificate or password stops the send before it starts.
    pub async fn check(&self) -> Result<(), SendError> {
        let inner = self.current();
        let test = tokio::time::timeout(self.command_timeout, inner.test_connection());
        let Ok(result) = test.await else {
            return Err(SendError::new(
                FailureKind::Fatal,
                None,
                format!(
                    "the SMTP server {} did not answer within {}s (smtp.timeout_secs)",
                    self.server,
                    self.command_timeout.as_secs()
                ),
            ));
        };
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::new(
                FailureKind::Fatal,
                None,
                format!("the SMTP server {} did not answer NOOP", self.server),
            )),
            Err(e) => {
                let mut err = classify(&e);
                err.kind = FailureKind::Fatal;
                err.message = format!(
                    "cannot use the SMTP server {}: {}{}",
                    self.server,
                    err.message,
                    advice(&err)
                );
                Err(err)
            }
        }
    }
}

/// What to do about a connection-level failure.
fn advice(e: &SendError) -> &'static str {
    match e.code {
        Some(530 | 534 | 535 | 538) => " — check smtp.username and TIDINGS_SMTP_PASSWORD",
        _ if e.message.contains("Connection refused") => {
            " — check smtp.host and smtp.port, and that the server runs"
        }
        _ if e.message.to_ascii_lowercase().contains("tls")
            || e.message.contains("certificate") =>
        {
            " — check smtp.tls (\"starttls\" on port 587, \"tls\" on 465) and the server's certificate"
        }
        _ => "",
    }
}

/// Sorts a lettre error into what the send loop does next.
pub fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(u16::from);
    let message = error_text(e);
    let kind = if e.is_tls() {
        FailureKind::Fatal
    } else if e.is_permanent() {
        match code {
            // Authentication required / failed: no recipient will get through.
            Some(530 | 534 | 535 | 538) => FailureKind::Fatal,
            // The address is rejected: the subscriber bounced.
            Some(550 | 551 | 553) => FailureKind::Rejected,
            _ => FailureKind::Permanent,
        }
    } else if e.is_transient() || e.is_timeout() {
        FailureKind::Transient
    } else if e.is_client() {
        // No compatible AUTH mechanism and the like: a setup problem.
        FailureKind::Fatal
    } else {
        // Dropped connections, I/O errors, unparsable replies: try again.
        FailureKind::Transient
    };
    SendError::new(kind, code, message)
}

/// The error with its causes, on one line.
fn error_text(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text.replace(['\r', '\n'], " ")
}

impl Transport for SmtpTransport {
    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let inner = self.current();
        match tokio::time::timeout(
            self.command_timeout,
            inner.send_raw(&message.envelope, &message.bytes),
        )
        .await
        {
            Ok(result) => result.map(|_| ()).map_err(|e| classify(&e)),
            Err(_) => {
                // lettre returns a connection whose send was cancelled to
                // its pool, still waiting for the server's reply: the next
                // send on it would hang too. Start a new pool; the old one
                // closes its connections when the last send using it ends.
                *self.inner.write().unwrap() = Arc::new(self.builder.clone().build());
                Err(SendError::new(
                    FailureKind::Transient,
                    None,
                    format!(
                        "timed out: no answer from the server within {}s (smtp.timeout_secs)",
                        self.command_timeout.as_secs()
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("smtp.example.org"));
        assert!(!is_loopback("10.0.0.1"));
    }

    // lettre's pool starts a task when built: these need a runtime.
    #[tokio::test]
    async fn clear_text_to_a_remote_host_is_refused() {
        let config = Config::parse(
            "[smtp]\nhost = \"smtp.example.org\"\ntls = \"none\"\n",
            "t.toml",
        )
        .unwrap();
        let err = SmtpTransport::new(&config).err().unwrap().to_string();
        assert!(
            err.contains(
                "smtp.tls = \"none\" sends passwords and mail in clear text to smtp.example.org"
            ),
            "{err}"
        );
        let config = Config::parse(
            "[smtp]\nhost = \"smtp.example.org\"\ntls = \"none\"\nallow_insecure = true\n",
            "t.toml",
        )
        .unwrap();
        assert!(SmtpTransport::new(&config).is_ok());
    }

    #[tokio::test]
    async fn username_without_password_is_refused() {
        let config = Config::parse(
            "[smtp]\nhost = \"localhost\"\nusername = \"me\"\n",
            "t.toml",
        )
        .unwrap();
        let err = SmtpTransport::new(&config).err().unwrap().to_string();
        assert!(err.contains("TIDINGS_SMTP_PASSWORD is not"), "{err}");
    }
}
