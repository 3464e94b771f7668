//! SMTP with lettre's async SMTP client on tokio, and a connection pool of
//! our own sized by `send.concurrency`.
//!
//! Why not lettre's `AsyncSmtpTransport` pool: it leaves Nagle's algorithm
//! on, so the final `.` of every message waits for the server's delayed
//! ACK (40 ms on Linux: 25 messages/s per connection on loopback), and it
//! returns a connection whose send was cancelled (our timeout) to the pool
//! mid-transaction, where the next send hangs on it. Its timeout covers
//! only connecting. Here each transaction is bounded, a connection that
//! saw any error is dropped, and sockets have TCP_NODELAY.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use super::{DeliverError, FailureKind, Outgoing, SendError, Transport};
use crate::config::{Config, ENV_SMTP_PASSWORD, TlsMode};

/// An idle connection is checked with NOOP before reuse after this long.
const STALE_AFTER: Duration = Duration::from_secs(5);

pub struct SmtpTransport {
    host: String,
    port: u16,
    mode: TlsMode,
    tls: Option<TlsParameters>,
    hello: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
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
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Tls => Some(
                TlsParameters::new(host.to_string()).map_err(|e| {
                    DeliverError::Config(format!("cannot set up TLS for {host}: {e}"))
                })?,
            ),
        };
        let credentials = if smtp.username.is_empty() {
            None
        } else {
            let password = config.secrets.smtp_password.as_ref().ok_or_else(|| {
                DeliverError::Config(format!(
                    "{origin}: smtp.username is set but {ENV_SMTP_PASSWORD} is not: export the password in that variable"
                ))
            })?;
            Some(Credentials::new(
                smtp.username.clone(),
                password.expose().to_string(),
            ))
        };
        let hello = if smtp.hello_name.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(smtp.hello_name.clone())
        };
        let mode = match smtp.tls {
            TlsMode::None => "no TLS",
            TlsMode::Starttls => "STARTTLS",
            TlsMode::Tls => "TLS",
        };
        Ok(SmtpTransport {
            host: host.to_string(),
            port: smtp.port(),
            mode: smtp.tls,
            tls,
            hello,
            credentials,
            timeout: smtp.timeout(),
            max_idle: config.send.concurrency.max(1),
            idle: Mutex::new(Vec::new()),
            server: format!("{host}:{} ({mode})", smtp.port()),
        })
    }

    /// A new connection: TCP (no Nagle), greeting and EHLO, TLS, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let mut conn = match self.mode {
            // Implicit TLS: lettre wraps the socket itself.
            TlsMode::Tls => AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                self.tls.clone(),
                None,
            )
            .await
            .map_err(|e| classify(&e))?,
            TlsMode::None | TlsMode::Starttls => {
                let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| {
                        SendError::new(FailureKind::Transient, None, format!("Connection error: {e}"))
                    })?;
                tcp.set_nodelay(true).map_err(|e| {
                    SendError::new(FailureKind::Transient, None, format!("Connection error: {e}"))
                })?;
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                    .await
                    .map_err(|e| classify(&e))?
            }
        };
        if self.mode == TlsMode::Starttls {
            let params = self.tls.clone().expect("TLS parameters for STARTTLS");
            conn.starttls(params, &self.hello).await.map_err(|e| {
                let mut err = classify(&e);
                err.kind = FailureKind::Fatal;
                err.message = format!("STARTTLS failed: {}", err.message);
                err
            })?;
        }
        if let Some(creds) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .await
                .map_err(|e| {
                    let mut err = classify(&e);
                    err.kind = FailureKind::Fatal;
                    err
                })?;
        }
        Ok(conn)
    }

    /// An idle connection (checked if it sat for a while), or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let parked = self.idle.lock().unwrap().pop();
            let Some((mut conn, since)) = parked else {
                return self.connect().await;
            };
            if since.elapsed() < STALE_AFTER || conn.test_connected().await {
                return Ok(conn);
            }
            conn.abort().await;
        }
    }

    fn park(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    async fn send_once(&self, message: &Outgoing) -> Result<(), SendError> {
        let mut conn = self.connection().await?;
        let result = conn.send(&message.envelope, &message.bytes).await;
        match result {
            Ok(_) => {
                self.park(conn);
                Ok(())
            }
            Err(e) => {
                // lettre has already sent QUIT on a failed command; a
                // connection that saw an error is not reused.
                if !conn.has_broken() {
                    conn.abort().await;
                }
                Err(classify(&e))
            }
        }
    }

    /// Connects once (greeting, EHLO, TLS, AUTH) so that a wrong host,
    /// port, certificate or password stops the send before it starts.
    pub async fn check(&self) -> Result<(), SendError> {
        let attempt = tokio::time::timeout(self.timeout, self.connect()).await;
        let result = match attempt {
            Ok(r) => r,
            Err(_) => {
                return Err(SendError::new(
                    FailureKind::Fatal,
                    None,
                    format!(
                        "the SMTP server {} did not answer within {}s (smtp.timeout_secs)",
                        self.server,
                        self.timeout.as_secs()
                    ),
                ));
            }
        };
        match result {
            Ok(conn) => {
                self.park(conn);
                Ok(())
            }
            Err(mut err) => {
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
        // The whole transaction is bounded: a server that stops answering
        // costs one timeout, and the connection is dropped with the future.
        match tokio::time::timeout(self.timeout, self.send_once(message)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::new(
                FailureKind::Transient,
                None,
                format!(
                    "timed out: no answer from the server within {}s (smtp.timeout_secs)",
                    self.timeout.as_secs()
                ),
            )),
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

    #[test]
    fn clear_text_to_a_remote_host_is_refused() {
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

    #[test]
    fn username_without_password_is_refused() {
        let config = Config::parse(
            "[smtp]\nhost = \"localhost\"\nusername = \"me\"\n",
            "t.toml",
        )
        .unwrap();
        let err = SmtpTransport::new(&config).err().unwrap().to_string();
        assert!(err.contains("TIDINGS_SMTP_PASSWORD is not"), "{err}");
    }
}
