//! Deliver: per-recipient messages, the transports that take them, and the
//! send loop that paces them and hands every outcome to the store's
//! journal. Sending an issue is one call, [`campaign::send`]; `preview`,
//! the dry run and `--to` test sends run the same loop ([`send::run`]) with
//! another queue and transport.
//!
//! Owns no SQL (the journal's queries are the store's) and prints nothing
//! but the progress display it is given; the CLI confirms and reports.
//!
//! Every transport implements one method that receives the envelope and
//! the raw bytes (see lettre's `Transport`): the preview files, the dry run
//! and SMTP therefore all see exactly the same message.

pub mod campaign;
pub mod dkim;
pub mod file;

pub mod memory;
pub mod message;
pub mod mime;
pub mod preview;
pub mod rate;
pub mod send;
pub mod smtp;
pub mod smtp_client;
pub mod sources;
pub mod unsubscribe;
pub mod verp;

use std::future::Future;
use std::pin::Pin;

pub use file::FileTransport;
pub use memory::MemoryTransport;
pub use message::{BuildError, MessageFactory};
pub use preview::PreviewTransport;

/// One message, ready for any transport.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The recipient's address as stored.
    pub to: String,
    pub envelope: lettre::address::Envelope,
    /// The complete RFC 5322 message.
    pub bytes: Vec<u8>,
    pub message_id: String,
}

/// How a send failed, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 4xx, timeout, dropped connection: retry later.
    Transient,
    /// 5xx on this message: record as failed.
    Permanent,
    /// 5xx that rejects the recipient's address (550/551/553): failed, and
    /// the subscriber is marked bounced.
    Rejected,
    /// Authentication, TLS, or a server we cannot reach at all: stop the run.
    Fatal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub kind: FailureKind,
    /// The SMTP reply code, when there was one.
    pub code: Option<u16>,
    /// The server's reply or the local cause, for the journal and report.
    pub message: String,
}

impl SendError {
    pub fn new(kind: FailureKind, code: Option<u16>, message: impl Into<String>) -> SendError {
        SendError {
            kind,
            code,
            message: message.into(),
        }
    }
}

/// What a failed attempt leaves in the journal.
impl From<SendError> for crate::store::journal::Failure {
    fn from(e: SendError) -> Self {
        crate::store::journal::Failure {
            code: e.code,
            message: e.message,
        }
    }
}

/// Takes finished messages somewhere.
pub trait Transport: Send + Sync {
    /// Where messages go, for the confirmation prompt and the report
    /// (`smtp.example.org:587`, `preview files in out/`).
    fn describe(&self) -> String;

    /// Makes sure messages can go there before anything is recorded (SMTP
    /// connects, says EHLO, starts TLS and logs in); `Ok` by default.
    fn check(&self) -> impl Future<Output = Result<(), SendError>> + Send {
        async { Ok(()) }
    }

    /// Sends one message; `Ok` means the receiving side accepted it.
    fn send(&self, message: &Outgoing) -> impl Future<Output = Result<(), SendError>> + Send;

    /// Ends the run: closes what is still open (SMTP says QUIT first).
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Sends one message under the send loop's `gate`: the receiving side
    /// may accept it only after `gate.ready(…)` returned, and its result
    /// goes to `gate.done` before whatever carried it (an SMTP connection)
    /// takes another message. This default waits before the whole send;
    /// SMTP waits just before the end of DATA, after the message went out.
    fn send_gated(
        &self,
        message: &Outgoing,
        gate: &dyn Gate,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        async move {
            gate.ready(0).await?;
            let result = self.send(message).await;
            gate.done(&result);
            result
        }
    }
}

/// A transport shared between the send loop and its owner (a test that
/// reads what was sent, `preview` that writes the gallery afterwards).
impl<T: Transport> Transport for std::sync::Arc<T> {
    fn describe(&self) -> String {
        self.as_ref().describe()
    }
    fn check(&self) -> impl Future<Output = Result<(), SendError>> + Send {
        self.as_ref().check()
    }
    fn send(&self, message: &Outgoing) -> impl Future<Output = Result<(), SendError>> + Send {
        self.as_ref().send(message)
    }
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.as_ref().close()
    }
    fn send_gated(
        &self,
        message: &Outgoing,
        gate: &dyn Gate,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.as_ref().send_gated(message, gate)
    }
}

/// The send loop's hold on the moment a message can no longer be taken
/// back (for SMTP, the end of DATA): what makes a crash cost at most one
/// duplicate per connection.
pub trait Gate: Send + Sync {
    /// Returns once the server may accept the message: it is recorded as
    /// on the wire, and so is every outcome whose ticket is `after` or
    /// lower (the one the same connection carried before). An error means
    /// it must not go out (the journal cannot record).
    fn ready(&self, after: u64)
    -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>>;
    /// Hands over the attempt's result to be recorded (without waiting);
    /// returns the ticket to pass to `ready` of the next message on the
    /// same connection. Only the first call counts.
    fn done(&self, result: &Result<(), SendError>) -> u64;
}

/// The configured mail server (`[smtp]`), keeping up to `connections`
/// sessions open: one per concurrent send, so none is opened per message.
pub fn smtp(
    config: &crate::config::Config,
    connections: usize,
) -> Result<impl Transport + 'static, DeliverError> {
    Ok(smtp::SmtpTransport::new(config)?.keep_idle(connections))
}

/// Errors that stop a delivery run before or outside a single recipient.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("{0}")]
    Config(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A file name for a recipient's files: the address, with anything that is
/// not safe in a file name replaced.
pub fn file_stem(email: &str) -> String {
    let mut s: String = email
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') {
        s.insert(0, '_');
    }
    if s.is_empty() {
        s.push('_');
    }
    s
}
