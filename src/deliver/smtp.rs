//! The SMTP transport: a pool of connections of our own client (see
//! `smtp_client` for why not lettre's), sized by the run's concurrency.
//! Concurrency itself is bounded by the send loop.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::smtp_client::{ClientError, Connection, Login, Security, Stage, tls_config};
use super::{DeliverError, FailureKind, Gate, Outgoing, SendError, Transport};
use crate::config::{Config, ENV_SMTP_PASSWORD, TlsMode};

/// An idle connection is checked with NOOP before reuse after this long.
const STALE_AFTER: Duration = Duration::from_secs(5);

pub struct SmtpTransport {
    host: String,
    port: u16,
    security: Security,
    hello: String,
    login: Option<Login>,
    timeout: Duration,
    max_idle: usize,
    /// Idle connections, when each was parked, and the ticket of the last
    /// outcome it carried (see `Gate`).
    idle: Mutex<Vec<(Connection, Instant, u64)>>,
    /// `host:port (mode)`, for messages.
    server: String,
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
        let security = match smtp.tls {
            TlsMode::None => Security::None,
            mode => {
                let ca = match smtp.ca_file.trim() {
                    "" => None,
                    path => {
                        let path = config.base_dir().join(path);
                        Some(std::fs::read(&path).map_err(|e| {
                            DeliverError::Config(format!(
                                "{origin}: cannot read smtp.ca_file {}: {e}",
                                path.display()
                            ))
                        })?)
                    }
                };
                let tls = tls_config(ca.as_deref())
                    .map_err(|e| DeliverError::Config(format!("{origin}: smtp.ca_file: {e}")))?;
                if mode == TlsMode::Tls {
                    Security::Tls(tls)
                } else {
                    Security::StartTls(tls)
                }
            }
        };
        let login = if smtp.username.is_empty() {
            None
        } else {
            let password = config.secrets.smtp_password.as_ref().ok_or_else(|| {
                DeliverError::Config(format!(
                    "{origin}: smtp.username is set but {ENV_SMTP_PASSWORD} is not: export the password in that variable"
                ))
            })?;
            Some(Login {
                username: smtp.username.clone(),
                password: password.expose().to_string(),
            })
        };
        let hello = if smtp.hello_name.is_empty() {
            crate::store::journal::hostname()
        } else {
            smtp.hello_name.clone()
        };
        let mode = match smtp.tls {
            TlsMode::None => "no TLS",
            TlsMode::Starttls => "STARTTLS",
            TlsMode::Tls => "TLS",
        };
        Ok(SmtpTransport {
            host: host.to_string(),
            port: smtp.port(),
            security,
            hello,
            login,
            timeout: smtp.timeout(),
            max_idle: config.send.concurrency.max(1),
            idle: Mutex::new(Vec::new()),
            server: format!("{host}:{} ({mode})", smtp.port()),
        })
    }

    /// Keeps up to `n` idle connections: the run's effective concurrency
    /// (e.g. `--concurrency 16`), or the extra workers would open and drop
    /// a session per message.
    pub fn keep_idle(mut self, n: usize) -> SmtpTransport {
        self.max_idle = n.max(1);
        self
    }

    async fn open(&self) -> Result<Connection, SendError> {
        Connection::open(
            &self.host,
            self.port,
            &self.security,
            &self.hello,
            self.login.as_ref(),
        )
        .await
        .map_err(|e| classify(&e))
    }

    /// An idle connection (checked if it sat for a while) and its ticket,
    /// or a new one.
    async fn connection(&self) -> Result<(Connection, u64), SendError> {
        loop {
            let parked = self.idle.lock().unwrap().pop();
            let Some((mut conn, since, ticket)) = parked else {
                return Ok((self.open().await?, 0));
            };
            if since.elapsed() < STALE_AFTER || conn.noop().await {
                return Ok((conn, ticket));
            }
        }
    }

    fn park(&self, conn: Connection, ticket: u64) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now(), ticket));
        } else {
            // One too many: closed politely, without holding anyone up.
            tokio::spawn(tokio::time::timeout(QUIT_WAIT, conn.quit()));
        }
    }

    /// QUIT on every idle connection (each given [`QUIT_WAIT`] to answer).
    pub async fn close(&self) {
        let idle: Vec<_> = std::mem::take(&mut *self.idle.lock().unwrap());
        futures_util::future::join_all(
            idle.into_iter()
                .map(|(conn, _, _)| tokio::time::timeout(QUIT_WAIT, conn.quit())),
        )
        .await;
    }

    /// One message on one connection. The end of DATA waits for `gate`
    /// (this message recorded as on the wire, and the connection's previous
    /// outcome recorded), and the result reaches `gate` before the
    /// connection is parked: so each connection has at most one message
    /// the server may have accepted that the journal does not have.
    async fn send_once(&self, message: &Outgoing, gate: &dyn Gate) -> Result<(), SendError> {
        let (mut conn, ticket) = self.connection().await?;
        let from = message
            .envelope
            .from()
            .map(ToString::to_string)
            .unwrap_or_default();
        let to: Vec<String> = message
            .envelope
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut held = None;
        let ready = async {
            match gate.ready(ticket).await {
                Ok(()) => true,
                Err(e) => {
                    held = Some(e);
                    false
                }
            }
        };
        let sent = conn.send_gated(&from, &to, &message.bytes, ready).await;
        let result = match &sent {
            Ok(_) => Ok(()),
            Err(ClientError::Held) => {
                Err(held.take().unwrap_or_else(|| classify(&ClientError::Held)))
            }
            Err(e) => Err(classify(e)),
        };
        let ticket = gate.done(&result);
        match sent {
            Ok(_) | Err(ClientError::Unsupported(_)) => self.park(conn, ticket),
            // A refused command leaves the session usable after RSET;
            // anything else (network, protocol, held) and it is dropped.
            Err(ClientError::Reply { .. }) => {
                if matches!(conn.command("RSET").await, Ok(r) if r.code == 250) {
                    self.park(conn, ticket);
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Connects once (greeting, EHLO, TLS, AUTH) so that a wrong host,
    /// port, certificate or password stops the send before it starts.
    pub async fn check(&self) -> Result<(), SendError> {
        let result = tokio::time::timeout(self.timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(SendError::new(
                    FailureKind::Fatal,
                    None,
                    format!(
                        "no answer within {}s (smtp.timeout_secs)",
                        self.timeout.as_secs()
                    ),
                ))
            });
        match result {
            Ok(conn) => {
                self.park(conn, 0);
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
        _ if e.message.contains("TLS") || e.message.contains("certificate") => {
            " — check smtp.tls (\"starttls\" on port 587, \"tls\" on 465), and smtp.ca_file for a private CA"
        }
        _ => "",
    }
}

/// Sorts a client error into what the send loop does next.
pub fn classify(e: &ClientError) -> SendError {
    match e {
        ClientError::Reply { stage, reply } => {
            let code = reply.code;
            let transient = (400..500).contains(&code);
            let kind = match stage {
                // The server will not talk to us, or not with these
                // credentials, or not securely: no message can go out.
                Stage::Greeting | Stage::Ehlo | Stage::StartTls | Stage::Auth if !transient => {
                    FailureKind::Fatal
                }
                Stage::StartTls => FailureKind::Fatal,
                _ if transient => FailureKind::Transient,
                Stage::Rcpt if matches!(code, 550 | 551 | 553) => FailureKind::Rejected,
                _ => FailureKind::Permanent,
            };
            SendError::new(kind, Some(code), format!("{code} {}", reply.text()))
        }
        ClientError::Tls(m) => SendError::new(FailureKind::Fatal, None, format!("TLS error: {m}")),
        ClientError::Network(m) => SendError::new(
            FailureKind::Transient,
            None,
            format!("connection error: {m}"),
        ),
        ClientError::Protocol(m) => {
            SendError::new(FailureKind::Transient, None, format!("protocol error: {m}"))
        }
        // Permanent for this server, but not a bounce: the address is fine.
        ClientError::Unsupported(m) => SendError::new(FailureKind::Permanent, None, m.clone()),
        ClientError::Held => SendError::new(FailureKind::Fatal, None, e.to_string()),
    }
}

/// How long a server gets to answer QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(2);

impl SmtpTransport {
    async fn send_within(&self, message: &Outgoing, gate: &dyn Gate) -> Result<(), SendError> {
        // The whole transaction is bounded: a server that stops answering
        // costs one timeout, and the connection is dropped with the future.
        match tokio::time::timeout(self.timeout, self.send_once(message, gate)).await {
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

/// No gate: for `send` alone (test sends, checks).
struct Open;

impl Gate for Open {
    fn ready(
        &self,
        _after: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SendError>> + Send + '_>>
    {
        Box::pin(async { Ok(()) })
    }
    fn done(&self, _result: &Result<(), SendError>) -> u64 {
        0
    }
}

impl Transport for SmtpTransport {
    fn describe(&self) -> String {
        self.server.clone()
    }

    async fn check(&self) -> Result<(), SendError> {
        SmtpTransport::check(self).await
    }

    async fn close(&self) {
        SmtpTransport::close(self).await;
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        self.send_within(message, &Open).await
    }

    async fn send_gated(&self, message: &Outgoing, gate: &dyn Gate) -> Result<(), SendError> {
        self.send_within(message, gate).await
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

    #[tokio::test]
    async fn closing_the_transport_says_quit_on_every_idle_connection() {
        let (port, server) = crate::deliver::smtp_client::tests::serve_checked(vec![
            ("EHLO", "250 test\r\n"),
            ("QUIT", "221 bye\r\n"),
        ])
        .await;
        let config = Config::parse(
            &format!("[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"),
            "t.toml",
        )
        .unwrap();
        let transport = SmtpTransport::new(&config).unwrap();
        transport.check().await.unwrap();
        transport.close().await;
        server.await.expect("QUIT before the connection closed");
    }
}
