//! Real mail servers for the bounce tests: a throwaway Dovecot (IMAP on
//! loopback, TLS with a private CA made here with openssl) and, for the
//! end-to-end test, a throwaway Postfix relay (its own config directory
//! and queue, never the system instance).
//!
//! `scripts/test.sh` installs `dovecot-imapd` and exports
//! `TIDINGS_TEST_DOVECOT` (the `dovecot` binary) and
//! `TIDINGS_TEST_POSTFIX` (the `postfix` binary).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ENV_DOVECOT: &str = "TIDINGS_TEST_DOVECOT";
pub const ENV_POSTFIX: &str = "TIDINGS_TEST_POSTFIX";

pub const USER: &str = "bounces@news.example.org";
pub const PASSWORD: &str = "imap-test-password";

/// A port free on 127.0.0.1 just now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 and localhost:
/// `ca.crt`, `server.crt`, `server.key` in `dir`.
pub fn make_ca(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"])
            .args(["-subj", "/CN=tidings test CA"]),
        "openssl (CA)",
    );
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req"])
            .args(ec)
            .args(["-keyout", "server.key", "-out", "server.csr"])
            .args(["-subj", "/CN=127.0.0.1"]),
        "openssl (server key)",
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt"])
            .args(["-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt"])
            .args(["-days", "2", "-extfile", "server.ext"]),
        "openssl (server certificate)",
    );
}

/// The uid/gid mail is stored as: ours, or `nobody` when we are root
/// (Dovecot refuses to run mail processes as root).
fn mail_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    match id("-u") {
        0 => (65534, 65534),
        uid => (uid, id("-g")),
    }
}

pub struct Dovecot {
    child: Child,
    pub dir: PathBuf,
    /// Implicit TLS.
    pub imaps_port: u16,
    /// STARTTLS.
    pub imap_port: u16,
    /// The user's Maildir.
    pub maildir: PathBuf,
}

impl Dovecot {
    /// Starts Dovecot in `dir` (config, certificates, mail, log), with one
    /// user [`USER`] / [`PASSWORD`] and folders INBOX and `extra_folders`.
    pub fn start(dir: &Path, extra_folders: &[&str]) -> Dovecot {
        Dovecot::start_with(dir, extra_folders, "")
    }

    /// [`Dovecot::start`] with more lines for its config file.
    pub fn start_with(dir: &Path, extra_folders: &[&str], extra_conf: &str) -> Dovecot {
        let dovecot = super::require_env(ENV_DOVECOT, "Dovecot (Debian's dovecot-imapd)");
        make_ca(dir);
        let (uid, gid) = mail_ids();
        let maildir = dir.join("mail");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        for f in extra_folders {
            for sub in ["new", "cur", "tmp"] {
                std::fs::create_dir_all(maildir.join(format!(".{f}")).join(sub)).unwrap();
            }
        }
        for d in ["run", "state"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(
            dir.join("passwd"),
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{home}::\n",
                home = dir.join("home").display()
            ),
        )
        .unwrap();
        let imaps_port = free_port();
        let imap_port = free_port();
        let d = dir.display();
        let conf = format!(
            r#"base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{d}/server.crt
ssl_key = <{d}/server.key
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
disable_plaintext_auth = yes
mail_location = maildir:{maildir}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
{extra_conf}
"#,
            maildir = maildir.display()
        );
        std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
        // Mail files are the mail user's; the folder above must be
        // reachable by it and by Dovecot's own users.
        let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status();
        let _ = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&maildir)
            .status();
        let child = Command::new(&dovecot)
            .args(["-F", "-c"])
            .arg(dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {dovecot}: {e}"));
        let mut server = Dovecot {
            child,
            dir: dir.to_path_buf(),
            imaps_port,
            imap_port,
            maildir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dovecot exited at start ({status}):\n{}", self.log());
            }
            let up = |p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(self.imaps_port) && up(self.imap_port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dovecot did not listen within 20 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Delivers a message into a folder's `new/` (INBOX for `None`), as an
    /// LDA would: Dovecot sees it as a new, unseen message.
    pub fn deliver(&self, folder: Option<&str>, name: &str, bytes: &[u8]) {
        let dir = match folder {
            None => self.maildir.clone(),
            Some(f) => self.maildir.join(format!(".{f}")),
        };
        let tmp = dir.join("tmp").join(name);
        std::fs::write(&tmp, bytes).unwrap();
        let (uid, gid) = mail_ids();
        let _ = Command::new("chown")
            .arg(format!("{uid}:{gid}"))
            .arg(&tmp)
            .status();
        std::fs::rename(&tmp, dir.join("new").join(name)).unwrap();
    }

    /// Message files in a folder (`new/` and `cur/`).
    pub fn count(&self, folder: Option<&str>) -> usize {
        let dir = match folder {
            None => self.maildir.clone(),
            Some(f) => self.maildir.join(format!(".{f}")),
        };
        ["new", "cur"]
            .iter()
            .map(|s| std::fs::read_dir(dir.join(s)).map_or(0, |r| r.count()))
            .sum()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its children (auth, imap-login, imap)
        // too; SIGKILL would leave them behind.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `smtp-sink` next hop: refuses every recipient (`-f RCPT`, a 5xx) or
/// accepts everything.
pub struct Sink {
    child: Child,
    pub port: u16,
}

impl Sink {
    pub fn start(refuse_recipients: bool) -> Sink {
        let sink = super::require_env(super::ENV_SMTP_SINK, "Postfix's smtp-sink");
        let port = free_port();
        let mut cmd = Command::new(sink);
        if mail_ids().0 == 65534 {
            // smtp-sink refuses to run as root.
            cmd.args(["-u", "nobody"]);
        }
        if refuse_recipients {
            cmd.args(["-f", "RCPT"]);
        }
        let child = cmd
            .args(["-c", &format!("127.0.0.1:{port}"), "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "smtp-sink did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink { child, port }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway Postfix relay: its own config folder and queue in `dir`,
/// SMTP on a free loopback port, mynetworks 127.0.0.0/8; routes
/// `transports` (domain, port of a next hop on 127.0.0.1) and delivers
/// mail for `virtual_domain` (with `+` tags) into `maildir` (Dovecot's),
/// so bounces land where IMAP reads them. Never the system instance.
pub struct Postfix {
    dir: PathBuf,
    postfix: String,
    pub port: u16,
}

impl Postfix {
    pub fn start(
        dir: &Path,
        transports: &[(&str, u16)],
        virtual_address: &str,
        maildir: &Path,
    ) -> Postfix {
        let postfix = super::require_env(ENV_POSTFIX, "Postfix (Debian's postfix)");
        assert_eq!(
            mail_ids().0,
            65534,
            "a throwaway Postfix needs root (run scripts/test.sh as root)"
        );
        for d in ["queue", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let _ = Command::new("chown")
            .args(["postfix"])
            .arg(dir.join("data"))
            .status();
        let port = free_port();
        let d = dir.display();
        let base = maildir.parent().unwrap();
        let mailbox = maildir.file_name().unwrap().to_string_lossy();
        let domain = virtual_address.split('@').nth(1).unwrap();
        std::fs::write(
            dir.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test.example
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
transport_maps = texthash:{d}/transport
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {base}
virtual_mailbox_maps = texthash:{d}/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 1
recipient_delimiter = +
maillog_file = {d}/postfix.log
maillog_file_prefixes = {d}
smtputf8_enable = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
biff = no
",
                base = base.display()
            ),
        )
        .unwrap();
        let transport: String = transports
            .iter()
            .map(|(domain, p)| format!("{domain} smtp:[127.0.0.1]:{p}\n"))
            .collect();
        std::fs::write(dir.join("transport"), transport).unwrap();
        std::fs::write(
            dir.join("vmailbox"),
            format!("{virtual_address} {mailbox}/\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"
            ),
        )
        .unwrap();
        let server = Postfix {
            dir: dir.to_path_buf(),
            postfix,
            port,
        };
        let out = Command::new(&server.postfix)
            .arg("-c")
            .arg(dir)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix -c {d} start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "postfix did not listen within 20 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(&self.postfix)
            .arg("-c")
            .arg(&self.dir)
            .arg("stop")
            .output();
    }
}
