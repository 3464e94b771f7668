//! A small SMTP client (RFC 5321) for the send loop's hot path.
//!
//! Why not lettre's async client: it escapes the message byte by byte
//! (30% of the send loop's CPU in a profile), sends MAIL, RCPT and DATA one
//! round trip at a time even when the server offers PIPELINING, leaves
//! Nagle's algorithm on (the final `.` then waits for a delayed ACK: 40 ms
//! per message), and its pool returns a connection whose send was cancelled
//! mid-transaction. This client pipelines the envelope (RFC 2920), escapes
//! with memchr, and is used one transaction at a time by its owner; any
//! error makes the connection unusable, so it is never reused half-way.
//! TLS is rustls (what lettre itself uses) with the webpki roots plus an
//! optional private CA.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A reply: its code and its text lines (without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// What went wrong, in the terms the send loop acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The server answered with an error reply at `stage`.
    Reply { stage: Stage, reply: Reply },
    /// The connection failed or closed (before or during the transaction).
    Network(String),
    /// TLS could not be set up or verified.
    Tls(String),
    /// The server said something that is not SMTP.
    Protocol(String),
    /// This message cannot go through this server (an address that needs
    /// SMTPUTF8, which it does not offer); nothing was sent, and the
    /// connection stays usable.
    Unsupported(String),
    /// The caller held back the end of DATA (`send_gated`): nothing was
    /// delivered, and the connection is mid-DATA, not reusable.
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Message,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Reply { stage, reply } => {
                write!(f, "{} {} (at {stage:?})", reply.code, reply.text())
            }
            ClientError::Network(m) => write!(f, "connection error: {m}"),
            ClientError::Tls(m) => write!(f, "TLS error: {m}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Unsupported(m) => f.write_str(m),
            ClientError::Held => f.write_str("held back before the end of DATA"),
        }
    }
}

fn net(e: std::io::Error) -> ClientError {
    ClientError::Network(e.to_string())
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while switching to TLS.
    Closed,
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Closed => std::task::Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Closed => std::task::Poll::Ready(Err(closed())),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Closed => std::task::Poll::Ready(Err(closed())),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Closed => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// How to secure the connection.
#[derive(Clone)]
pub enum Security {
    None,
    /// Plain connect, then STARTTLS (required: refusing is an error).
    StartTls(Arc<rustls::ClientConfig>),
    /// TLS from the first byte (port 465).
    Tls(Arc<rustls::ClientConfig>),
}

/// A TLS configuration trusting the public web roots, plus the PEM
/// certificates in `extra_ca` (a relay with a private CA).
pub fn tls_config(extra_ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err("no certificate found in the CA file".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Credentials for AUTH PLAIN or LOGIN.
#[derive(Clone)]
pub struct Login {
    pub username: String,
    pub password: String,
}

pub struct Connection {
    stream: BufReader<Stream>,
    pipelining: bool,
    eight_bit: bool,
    smtputf8: bool,
    auth: Vec<String>,
    /// Reusable buffer for the escaped message.
    buf: Vec<u8>,
}

const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 200;

impl Connection {
    /// Connects, reads the greeting, says EHLO, secures and authenticates.
    pub async fn open(
        host: &str,
        port: u16,
        security: &Security,
        hello: &str,
        login: Option<&Login>,
    ) -> Result<Connection, ClientError> {
        let tcp = TcpStream::connect((host, port)).await.map_err(net)?;
        // The final "." of a message is a small write after a large one:
        // with Nagle it waits for the server's delayed ACK.
        tcp.set_nodelay(true).map_err(net)?;
        let stream = match security {
            Security::Tls(config) => Stream::Tls(Box::new(handshake(tcp, host, config).await?)),
            _ => Stream::Plain(tcp),
        };
        let mut conn = Connection {
            stream: BufReader::new(stream),
            pipelining: false,
            eight_bit: false,
            smtputf8: false,
            auth: Vec::new(),
            buf: Vec::new(),
        };
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(ClientError::Reply {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        conn.ehlo(hello).await?;
        if let Security::StartTls(config) = security {
            let reply = conn.command("STARTTLS").await?;
            if reply.code != 220 {
                return Err(ClientError::Reply {
                    stage: Stage::StartTls,
                    reply,
                });
            }
            // Anything the server sent after its 220 is dropped with the
            // buffer: nothing read in clear text may count after TLS.
            let plain = std::mem::replace(&mut conn.stream, BufReader::new(Stream::Closed));
            let Stream::Plain(tcp) = plain.into_inner() else {
                return Err(ClientError::Protocol("STARTTLS on a TLS connection".into()));
            };
            conn.stream =
                BufReader::new(Stream::Tls(Box::new(handshake(tcp, host, config).await?)));
            conn.ehlo(hello).await?;
        }
        if let Some(login) = login {
            conn.authenticate(login).await?;
        }
        Ok(conn)
    }

    async fn ehlo(&mut self, hello: &str) -> Result<(), ClientError> {
        let reply = self.command(&format!("EHLO {hello}")).await?;
        if reply.code != 250 {
            // An old or minimal server (RFC 5321 4.1.4): HELO, without
            // extensions. If that fails too, EHLO's answer is the error.
            if matches!(self.command(&format!("HELO {hello}")).await, Ok(r) if r.code == 250) {
                return Ok(());
            }
            return Err(ClientError::Reply {
                stage: Stage::Ehlo,
                reply,
            });
        }
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("PIPELINING") => self.pipelining = true,
                Some("8BITMIME") => self.eight_bit = true,
                Some("SMTPUTF8") => self.smtputf8 = true,
                Some("AUTH") => self.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        Ok(())
    }

    async fn authenticate(&mut self, login: &Login) -> Result<(), ClientError> {
        let reply = if self.auth.iter().any(|m| m == "PLAIN") {
            let token = B64.encode(format!("\0{}\0{}", login.username, login.password));
            self.command(&format!("AUTH PLAIN {token}")).await?
        } else if self.auth.iter().any(|m| m == "LOGIN") {
            let r = self.command("AUTH LOGIN").await?;
            if r.code != 334 {
                return Err(ClientError::Reply {
                    stage: Stage::Auth,
                    reply: r,
                });
            }
            let r = self.command(&B64.encode(&login.username)).await?;
            if r.code != 334 {
                return Err(ClientError::Reply {
                    stage: Stage::Auth,
                    reply: r,
                });
            }
            self.command(&B64.encode(&login.password)).await?
        } else {
            return Err(ClientError::Protocol(format!(
                "the server offers no AUTH PLAIN or LOGIN (it offers: {})",
                if self.auth.is_empty() {
                    "none".into()
                } else {
                    self.auth.join(", ")
                }
            )));
        };
        if reply.code != 235 {
            return Err(ClientError::Reply {
                stage: Stage::Auth,
                reply,
            });
        }
        Ok(())
    }

    /// One line out, one reply in.
    pub async fn command(&mut self, line: &str) -> Result<Reply, ClientError> {
        let s = self.stream.get_mut();
        s.write_all(line.as_bytes()).await.map_err(net)?;
        s.write_all(b"\r\n").await.map_err(net)?;
        s.flush().await.map_err(net)?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        read_reply(&mut self.stream).await
    }

    /// One message: envelope (pipelined when offered), then the content.
    /// `content` is the RFC 5322 message with CRLF line ends.
    pub async fn send(
        &mut self,
        from: &str,
        to: &[String],
        content: &[u8],
    ) -> Result<Reply, ClientError> {
        self.send_gated(from, to, content, async { true }).await
    }

    /// `send`, holding back the end of DATA (the only point after which
    /// the server may deliver) until `ready` resolves; `false` abandons the
    /// message with `ClientError::Held`, and the connection must then be
    /// dropped (it is in the middle of DATA).
    pub async fn send_gated(
        &mut self,
        from: &str,
        to: &[String],
        content: &[u8],
        ready: impl Future<Output = bool>,
    ) -> Result<Reply, ClientError> {
        // Domains arrive as A-labels: only a non-ASCII local part needs
        // SMTPUTF8 (RFC 6531). Without it such an address cannot be carried
        // at all, so this message fails here rather than reach the server
        // as bytes it never agreed to take.
        let utf8 = !from.is_ascii() || to.iter().any(|t| !t.is_ascii());
        if utf8 && !self.smtputf8 {
            let whose = if from.is_ascii() {
                "the address's"
            } else {
                "the sender's (newsletter.from)"
            };
            return Err(ClientError::Unsupported(format!(
                "{whose} local part is not ASCII and the server does not offer SMTPUTF8"
            )));
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if !content.is_ascii() && self.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        let mut commands = vec![mail];
        commands.extend(to.iter().map(|t| format!("RCPT TO:<{t}>")));
        commands.push("DATA".into());
        let stages: Vec<Stage> = std::iter::once(Stage::Mail)
            .chain(to.iter().map(|_| Stage::Rcpt))
            .chain(std::iter::once(Stage::Data))
            .collect();

        let replies = if self.pipelining {
            let batch: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
            let s = self.stream.get_mut();
            s.write_all(batch.as_bytes()).await.map_err(net)?;
            s.flush().await.map_err(net)?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in &commands {
                replies.push(self.read_reply().await?);
            }
            replies
        } else {
            let mut replies = Vec::with_capacity(commands.len());
            for c in &commands {
                let r = self.command(c).await?;
                let ok = r.is_positive();
                replies.push(r);
                if !ok {
                    break;
                }
            }
            replies
        };
        // The first failure explains the rest (a refused RCPT makes the
        // pipelined DATA fail too).
        for (reply, stage) in replies.iter().zip(&stages) {
            let expected = if *stage == Stage::Data { 354 } else { 250 };
            if reply.code != expected && !(reply.code == 251 && *stage == Stage::Rcpt) {
                if *stage != Stage::Data && replies.last().is_some_and(|r| r.code == 354) {
                    // DATA was accepted although a command before it failed:
                    // end the (empty) data so the server can carry on.
                    let s = self.stream.get_mut();
                    let _ = s.write_all(b".\r\n").await;
                    let _ = s.flush().await;
                    let _ = self.read_reply().await;
                }
                return Err(ClientError::Reply {
                    stage: *stage,
                    reply: reply.clone(),
                });
            }
        }

        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        escape_data(content, &mut buf);
        let s = self.stream.get_mut();
        let mut ready = std::pin::pin!(ready);
        // Usually the gate opened while the envelope went back and forth:
        // then the whole message goes out in one write (one segment less
        // for the server to wake up for). Otherwise everything but the
        // final ".\r\n" goes out while the gate waits.
        let written = match futures_util::FutureExt::now_or_never(ready.as_mut()) {
            Some(true) => async {
                s.write_all(&buf).await?;
                s.flush().await
            }
            .await
            .map_err(net),
            Some(false) => Err(ClientError::Held),
            None => {
                let (body, end) = buf.split_at(buf.len() - 3);
                let written = async {
                    s.write_all(body).await?;
                    s.flush().await
                }
                .await;
                match written {
                    Ok(()) if ready.await => async {
                        s.write_all(end).await?;
                        s.flush().await
                    }
                    .await
                    .map_err(net),
                    Ok(()) => Err(ClientError::Held),
                    Err(e) => Err(net(e)),
                }
            }
        };
        self.buf = buf;
        written?;
        let reply = self.read_reply().await?;
        if reply.code != 250 {
            return Err(ClientError::Reply {
                stage: Stage::Message,
                reply,
            });
        }
        Ok(reply)
    }

    /// NOOP: is the connection still usable?
    pub async fn noop(&mut self) -> bool {
        matches!(self.command("NOOP").await, Ok(r) if r.code == 250)
    }

    /// QUIT, politely; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }
}

/// One SMTP reply (RFC 5321 4.2), multi-line or not: bounded in line
/// length and count; anything else is a protocol error, never a panic.
pub(crate) async fn read_reply<R: AsyncBufRead + Unpin>(
    stream: &mut R,
) -> Result<Reply, ClientError> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut *stream)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(net)?;
        if n == 0 {
            return Err(ClientError::Network(
                "the server closed the connection".into(),
            ));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        let code = l
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| ClientError::Protocol(format!("not an SMTP reply: {l:?}")))?;
        lines.push(l.get(4..).unwrap_or("").to_string());
        match l.as_bytes().get(3) {
            Some(b'-') if lines.len() < MAX_LINES => continue,
            Some(b'-') => {
                return Err(ClientError::Protocol("reply too long".into()));
            }
            _ => return Ok(Reply { code, lines }),
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ClientError::Tls(format!("`{host}` is not a valid TLS server name: {e}")))?;
    TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))
}

/// The DATA section: dot-stuffed (a line starting with "." gets another),
/// ending in CRLF "." CRLF.
pub fn escape_data(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + 64);
    let mut start = 0;
    if content.first() == Some(&b'.') {
        out.push(b'.');
    }
    for i in memchr::memmem::find_iter(content, b"\n.") {
        out.extend_from_slice(&content[start..=i]);
        out.push(b'.');
        start = i + 1;
    }
    out.extend_from_slice(&content[start..]);
    if !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        let mut out = Vec::new();
        escape_data(b".start\r\nmid\r\n.dot\r\n..two\r\nend", &mut out);
        assert_eq!(
            out,
            b"..start\r\nmid\r\n..dot\r\n...two\r\nend\r\n.\r\n".to_vec()
        );
        out.clear();
        escape_data(b"body\r\n", &mut out);
        assert_eq!(out, b"body\r\n.\r\n".to_vec());
    }

    /// A scripted server: answers each line it reads with the next reply.
    async fn serve(script: Vec<(&'static str, &'static str)>) -> u16 {
        serve_checked(script).await.0
    }

    /// [`serve`], with the server's task: it fails (a panic) unless the
    /// client said every line of the script.
    pub(crate) async fn serve_checked(
        script: Vec<(&'static str, &'static str)>,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut sock = BufReader::new(sock);
            sock.get_mut()
                .write_all(b"220 test ESMTP\r\n")
                .await
                .unwrap();
            let mut in_data = false;
            for (expect, reply) in script {
                let mut line = String::new();
                loop {
                    line.clear();
                    sock.read_line(&mut line).await.unwrap();
                    if in_data && line != ".\r\n" {
                        continue;
                    }
                    break;
                }
                assert!(
                    line.starts_with(expect),
                    "expected {expect:?}, got {line:?}"
                );
                in_data = reply.starts_with("354");
                sock.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_server_that_refuses_ehlo_gets_helo_and_quit() {
        let (port, server) = serve_checked(vec![
            ("EHLO me", "502 5.5.2 command not recognised\r\n"),
            ("HELO me", "250 test\r\n"),
            ("MAIL FROM:<a@x.org>", "250 ok\r\n"),
            ("RCPT TO:<b@x.org>", "250 ok\r\n"),
            ("DATA", "354 go\r\n"),
            (".", "250 queued\r\n"),
            ("QUIT", "221 bye\r\n"),
        ])
        .await;
        let mut c = Connection::open("127.0.0.1", port, &Security::None, "me", None)
            .await
            .unwrap();
        assert!(!c.pipelining && !c.eight_bit, "HELO offers no extensions");
        let r = c
            .send("a@x.org", &["b@x.org".into()], b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        c.quit().await;
        server.await.expect("the server saw the whole script");
    }

    #[tokio::test]
    async fn ehlo_and_helo_both_refused_is_the_ehlo_error() {
        let port = serve(vec![
            ("EHLO me", "554 5.7.1 go away\r\n"),
            ("HELO me", "554 5.7.1 go away\r\n"),
        ])
        .await;
        let err = Connection::open("127.0.0.1", port, &Security::None, "me", None)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err,
            ClientError::Reply {
                stage: Stage::Ehlo,
                reply: Reply {
                    code: 554,
                    lines: vec!["5.7.1 go away".into()]
                }
            }
        );
    }

    #[tokio::test]
    async fn pipelined_send_and_refused_recipient() {
        let port = serve(vec![
            ("EHLO", "250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            ("MAIL FROM:<a@x.org>", "250 ok\r\n"),
            ("RCPT TO:<b@x.org>", "250 ok\r\n"),
            ("DATA", "354 go\r\n"),
            (".", "250 2.0.0 queued as 1\r\n"),
            ("MAIL FROM:<a@x.org>", "250 ok\r\n"),
            ("RCPT TO:<c@x.org>", "550 5.1.1 no such user\r\n"),
            ("DATA", "554 5.5.1 no valid recipients\r\n"),
        ])
        .await;
        let mut c = Connection::open("127.0.0.1", port, &Security::None, "me", None)
            .await
            .unwrap();
        assert!(c.pipelining && c.eight_bit);
        let r = c
            .send("a@x.org", &["b@x.org".into()], b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        let err = c
            .send("a@x.org", &["c@x.org".into()], b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::Reply {
                stage: Stage::Rcpt,
                reply: Reply {
                    code: 550,
                    lines: vec!["5.1.1 no such user".into()]
                }
            }
        );
    }

    #[tokio::test]
    async fn a_utf8_local_part_needs_smtputf8() {
        // Without SMTPUTF8: refused before anything is sent; the next
        // message on the same connection goes through.
        let port = serve(vec![
            ("EHLO", "250-test\r\n250 8BITMIME\r\n"),
            ("MAIL FROM:<a@x.org>\r\n", "250 ok\r\n"),
            ("RCPT TO:<b@x.org>", "250 ok\r\n"),
            ("DATA", "354 go\r\n"),
            (".", "250 queued\r\n"),
        ])
        .await;
        let mut c = Connection::open("127.0.0.1", port, &Security::None, "me", None)
            .await
            .unwrap();
        let err = c
            .send(
                "a@x.org",
                &["josé@x.org".into()],
                b"To: jos\xc3\xa9@x.org\r\n\r\nhi\r\n",
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::Unsupported(
                "the address's local part is not ASCII and the server does not offer SMTPUTF8"
                    .into()
            )
        );
        c.send("a@x.org", &["b@x.org".into()], b"Subject: x\r\n\r\nhi\r\n")
            .await
            .unwrap();

        // With it: asked for on MAIL FROM, the address sent as UTF-8.
        let port = serve(vec![
            ("EHLO", "250-test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"),
            (
                "MAIL FROM:<a@x.org> BODY=8BITMIME SMTPUTF8\r\n",
                "250 ok\r\n",
            ),
            ("RCPT TO:<josé@x.org>\r\n", "250 ok\r\n"),
            ("DATA", "354 go\r\n"),
            (".", "250 queued\r\n"),
        ])
        .await;
        let mut c = Connection::open("127.0.0.1", port, &Security::None, "me", None)
            .await
            .unwrap();
        c.send(
            "a@x.org",
            &["josé@x.org".into()],
            b"To: jos\xc3\xa9@x.org\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn auth_plain_and_failure() {
        let port = serve(vec![
            ("EHLO", "250-test\r\n250 AUTH LOGIN PLAIN\r\n"),
            (
                "AUTH PLAIN AHVzZXIAc2VjcmV0",
                "535 5.7.8 bad credentials\r\n",
            ),
        ])
        .await;
        let login = Login {
            username: "user".into(),
            password: "secret".into(),
        };
        let err = Connection::open("127.0.0.1", port, &Security::None, "me", Some(&login))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, ClientError::Reply { stage: Stage::Auth, reply } if reply.code == 535),
            "{err}"
        );
    }

    #[tokio::test]
    async fn starttls_refused_is_an_error() {
        let port = serve(vec![
            ("EHLO", "250-test\r\n250 PIPELINING\r\n"),
            ("STARTTLS", "454 4.7.0 TLS not available\r\n"),
        ])
        .await;
        let config = tls_config(None).unwrap();
        let err = Connection::open("127.0.0.1", port, &Security::StartTls(config), "me", None)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, ClientError::Reply { stage: Stage::StartTls, reply } if reply.code == 454),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever a server sends, the reply parser answers (a reply or
        /// an error) without a panic, and a valid reply reads back.
        #[test]
        fn any_server_bytes_parse_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            lines in proptest::collection::vec("[ -~]{0,40}", 1..5),
            code in 200u16..600,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut input: &[u8] = &bytes;
            let _ = rt.block_on(read_reply(&mut input));
            let mut text = String::new();
            for (i, l) in lines.iter().enumerate() {
                let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                text.push_str(&format!("{code}{sep}{l}\r\n"));
            }
            let mut input: &[u8] = text.as_bytes();
            let reply = rt.block_on(read_reply(&mut input)).unwrap();
            proptest::prop_assert_eq!(reply.code, code);
            proptest::prop_assert_eq!(reply.lines, lines);
        }
    }
}
