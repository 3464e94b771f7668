//! The bounce mailbox over IMAP (`async-imap` on tokio): TLS from the
//! first byte (`imaps://`) or STARTTLS (`imap://`, required), the same
//! rustls trust as SMTP (public roots plus `bounces.ca_file`), login,
//! select the URL's folder, fetch the unseen messages one at a time, hand
//! each to the handler, then move it to `bounces.processed_folder` (or
//! flag it `\Seen` where the server has no MOVE).
//!
//! A message the handler could not finish (the store was down) is left
//! unseen, so the next fetch takes it again; one it finished, even as
//! unreadable, is moved, so it is not read again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{Config, ENV_BOUNCES_PASSWORD, Secret};

/// How long any one connect or command may take.
const TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::config::{ImapSecurity as Security, ImapUrl};

/// Everything a fetch needs, checked.
#[derive(Debug, Clone)]
pub struct ImapSettings {
    pub url: ImapUrl,
    pub username: String,
    pub password: Secret,
    pub processed_folder: String,
    pub tls: Arc<rustls::ClientConfig>,
}

impl ImapSettings {
    /// From `[bounces]` and `TIDINGS_BOUNCES_PASSWORD`; each problem names
    /// the key or variable to set.
    pub fn from_config(config: &Config) -> Result<ImapSettings, ImapError> {
        let b = &config.bounces;
        let origin = config
            .origin
            .as_ref()
            .map_or("config".into(), |p| p.display().to_string());
        let setup = |m: String| ImapError::Setup(format!("{origin}: {m}"));
        if b.imap_url.trim().is_empty() {
            return Err(setup(
                "bounces.imap_url is not set: add e.g. imap_url = \"imaps://mail.example.org/INBOX\" under [bounces]".into(),
            ));
        }
        let url =
            ImapUrl::parse(&b.imap_url).map_err(|e| setup(format!("bounces.imap_url {e}")))?;
        if b.username.trim().is_empty() {
            return Err(setup(
                "bounces.username is not set: the bounce mailbox's login".into(),
            ));
        }
        let password = config.secrets.bounces_password.clone().ok_or_else(|| {
            ImapError::Setup(format!(
                "{ENV_BOUNCES_PASSWORD} is not set: the bounce mailbox's password is read only from the environment"
            ))
        })?;
        let ca = match b.ca_file.trim() {
            "" => None,
            f => {
                let path = config.base_dir().join(f);
                Some(read_ca(&path).map_err(|e| setup(format!("bounces.ca_file: {e}")))?)
            }
        };
        let tls = crate::deliver::smtp_client::tls_config(ca.as_deref())
            .map_err(|e| setup(format!("bounces.ca_file: {e}")))?;
        Ok(ImapSettings {
            url,
            username: b.username.trim().to_string(),
            password,
            processed_folder: b.processed_folder.trim().to_string(),
            tls,
        })
    }
}

fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot connect to {host}:{port}: {message}")]
    Connect {
        host: String,
        port: u16,
        message: String,
    },
    #[error(
        "TLS with {host} failed: {message} — check bounces.imap_url (imaps:// on 993, imap:// with STARTTLS on 143) and bounces.ca_file for a private CA"
    )]
    Tls { host: String, message: String },
    #[error(
        "{host} refused the login of `{username}`: {message} — check bounces.username and {ENV_BOUNCES_PASSWORD}"
    )]
    Login {
        host: String,
        username: String,
        message: String,
    },
    #[error(
        "{host} has no folder `{folder}` (it has: {existing}) — check the folder in bounces.imap_url"
    )]
    MissingFolder {
        host: String,
        folder: String,
        existing: String,
    },
    #[error("IMAP {command} on {host} failed: {message}")]
    Command {
        host: String,
        command: String,
        message: String,
    },
}

/// What the handler made of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it (applied, ignored, or unreadable and reported): move
    /// it to the processed folder.
    Done,
    /// Not finished (the store failed): leave it unseen for next time.
    Keep,
}

/// Receives each unseen message.
#[async_trait::async_trait]
pub trait Handler: Send {
    /// `origin` is `imap:FOLDER/uid N`.
    async fn handle(&mut self, origin: &str, raw: &[u8]) -> Disposition;
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FetchStats {
    pub unseen: usize,
    pub moved: usize,
    pub flagged: usize,
    pub kept: usize,
}

type Session = async_imap::Session<TlsStream<TcpStream>>;

async fn within<T, E: std::fmt::Display>(
    host: &str,
    command: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError> {
    let err = |message: String| ImapError::Command {
        host: host.to_string(),
        command: command.to_string(),
        message,
    };
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("no answer within {} s", TIMEOUT.as_secs()))),
    }
}

/// Connects, logs in and selects the folder.
async fn open(s: &ImapSettings) -> Result<(Session, bool), ImapError> {
    let url = &s.url;
    let host = url.host.as_str();
    let connect_err = |message: String| ImapError::Connect {
        host: host.to_string(),
        port: url.port,
        message,
    };
    let tcp = match tokio::time::timeout(TIMEOUT, TcpStream::connect((host, url.port))).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(connect_err(e.to_string())),
        Err(_) => {
            return Err(connect_err(format!(
                "no answer within {} s",
                TIMEOUT.as_secs()
            )));
        }
    };
    let tcp = match url.security {
        Security::Tls => tcp,
        Security::StartTls => {
            let mut client = async_imap::Client::new(tcp);
            greeting(&mut client, host, url.port).await?;
            within(
                host,
                "STARTTLS",
                client.run_command_and_check_ok("STARTTLS", None),
            )
            .await
            .map_err(|e| ImapError::Tls {
                host: host.to_string(),
                message: format!("the server refused STARTTLS ({e})"),
            })?;
            client.into_inner()
        }
    };
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| ImapError::Tls {
            host: host.to_string(),
            message: format!("`{host}` is not a valid TLS server name: {e}"),
        })?;
    let tls = tokio::time::timeout(
        TIMEOUT,
        TlsConnector::from(s.tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| ImapError::Tls {
        host: host.to_string(),
        message: format!("no TLS handshake within {} s", TIMEOUT.as_secs()),
    })?
    .map_err(|e| ImapError::Tls {
        host: host.to_string(),
        message: e.to_string(),
    })?;
    let mut client = async_imap::Client::new(tls);
    if url.security == Security::Tls {
        greeting(&mut client, host, url.port).await?;
    }
    let mut session =
        match tokio::time::timeout(TIMEOUT, client.login(&s.username, s.password.expose())).await {
            Ok(Ok(session)) => session,
            Ok(Err((e, _))) => {
                return Err(ImapError::Login {
                    host: host.to_string(),
                    username: s.username.clone(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(ImapError::Login {
                    host: host.to_string(),
                    username: s.username.clone(),
                    message: format!("no answer within {} s", TIMEOUT.as_secs()),
                });
            }
        };
    let caps = within(host, "CAPABILITY", session.capabilities()).await?;
    let can_move = caps.has_str("MOVE");
    let folders = list_folders(&mut session, host).await?;
    if !folders.iter().any(|f| f == &url.folder) {
        return Err(ImapError::MissingFolder {
            host: host.to_string(),
            folder: url.folder.clone(),
            existing: folders.join(", "),
        });
    }
    if !folders.iter().any(|f| f == &s.processed_folder) {
        within(host, "CREATE", session.create(&s.processed_folder)).await?;
        eprintln!(
            "created folder `{}` on {host} (bounces.processed_folder)",
            s.processed_folder
        );
    }
    within(host, "SELECT", session.select(&url.folder)).await?;
    Ok((session, can_move))
}

async fn greeting<T>(
    client: &mut async_imap::Client<T>,
    host: &str,
    port: u16,
) -> Result<(), ImapError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    match tokio::time::timeout(TIMEOUT, client.read_response()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(ImapError::Connect {
            host: host.to_string(),
            port,
            message: "the server closed the connection before its greeting".into(),
        }),
        Ok(Err(e)) => Err(ImapError::Connect {
            host: host.to_string(),
            port,
            message: format!("no greeting: {e}"),
        }),
        Err(_) => Err(ImapError::Connect {
            host: host.to_string(),
            port,
            message: format!(
                "no greeting within {} s (TLS on a STARTTLS port, or the reverse?)",
                TIMEOUT.as_secs()
            ),
        }),
    }
}

async fn list_folders(session: &mut Session, host: &str) -> Result<Vec<String>, ImapError> {
    let names = within(host, "LIST", async {
        let stream = session.list(Some(""), Some("*")).await?;
        let names: Vec<_> = stream.try_collect().await?;
        Ok::<_, async_imap::error::Error>(names)
    })
    .await?;
    Ok(names.iter().map(|n| n.name().to_string()).collect())
}

/// Fetches every unseen message of the folder, hands each to `handler`,
/// then moves it (or, without MOVE, flags it seen). `dry_run` reads with
/// BODY.PEEK and changes nothing on the server.
pub async fn fetch(
    settings: &ImapSettings,
    dry_run: bool,
    handler: &mut dyn Handler,
) -> Result<FetchStats, ImapError> {
    let host = settings.url.host.as_str();
    let (mut session, can_move) = open(settings).await?;
    let mut uids: Vec<u32> = within(host, "UID SEARCH", session.uid_search("UNSEEN"))
        .await?
        .into_iter()
        .collect();
    uids.sort_unstable();
    let mut stats = FetchStats {
        unseen: uids.len(),
        ..FetchStats::default()
    };
    for uid in uids {
        // One message at a time: memory stays flat in the mailbox size.
        let fetched = within(host, "UID FETCH", async {
            let stream = session.uid_fetch(uid.to_string(), "BODY.PEEK[]").await?;
            let all: Vec<_> = stream.try_collect().await?;
            Ok::<_, async_imap::error::Error>(all)
        })
        .await?;
        let Some(body) = fetched.iter().find_map(|f| f.body()) else {
            // Expunged by another client meanwhile.
            continue;
        };
        let origin = format!("imap:{}/uid {uid}", settings.url.folder);
        match handler.handle(&origin, body).await {
            Disposition::Keep => stats.kept += 1,
            Disposition::Done if dry_run => {}
            Disposition::Done if can_move => {
                within(
                    host,
                    "UID MOVE",
                    session.uid_mv(uid.to_string(), &settings.processed_folder),
                )
                .await?;
                stats.moved += 1;
            }
            Disposition::Done => {
                within(host, "UID STORE", async {
                    let stream = session
                        .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Seen)")
                        .await?;
                    let _: Vec<_> = stream.try_collect().await?;
                    Ok::<_, async_imap::error::Error>(())
                })
                .await?;
                stats.flagged += 1;
            }
        }
    }
    // A failed LOGOUT loses nothing: everything above was answered.
    let _ = tokio::time::timeout(TIMEOUT, session.logout()).await;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ImapUrl::parse("imaps://mail.example.org/INBOX").unwrap();
        assert_eq!(
            u,
            ImapUrl {
                security: Security::Tls,
                host: "mail.example.org".into(),
                port: 993,
                folder: "INBOX".into()
            }
        );
        let u = ImapUrl::parse("imap://127.0.0.1:1143/Bounces%20In").unwrap();
        assert_eq!(
            (u.security, u.port, u.folder.as_str()),
            (Security::StartTls, 1143, "Bounces In")
        );
        assert_eq!(ImapUrl::parse("imaps://h").unwrap().folder, "INBOX");
        assert_eq!(
            ImapUrl::parse("https://h/INBOX").unwrap_err(),
            "`https://h/INBOX` is not an IMAP URL: write imaps://host[:port]/FOLDER (TLS) or imap://host[:port]/FOLDER (STARTTLS)"
        );
        assert!(
            ImapUrl::parse("imaps://h:99999/")
                .unwrap_err()
                .contains("port `99999`")
        );
        assert!(
            ImapUrl::parse("imaps://u:p@h/")
                .unwrap_err()
                .contains("TIDINGS_BOUNCES_PASSWORD")
        );
    }
}
