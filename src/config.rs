//! Configuration: `tidings.toml`, then `TIDINGS_<SECTION>_<KEY>` environment
//! overrides, then secrets (only ever from the environment).
//!
//! `Config::parse` is pure (text in, config out) so tests need no disk;
//! `Config::load` adds the file and the process environment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Environment variables that are read directly and are not config keys.
pub const ENV_SMTP_PASSWORD: &str = "TIDINGS_SMTP_PASSWORD";
pub const ENV_UNSUBSCRIBE_SECRET: &str = "TIDINGS_UNSUBSCRIBE_SECRET";
pub const ENV_DATABASE_URL: &str = "TIDINGS_DATABASE_URL";
pub const ENV_DKIM_PRIVATE_KEY: &str = "TIDINGS_DKIM_PRIVATE_KEY";
/// The bounce mailbox's IMAP password (`bounces.imap_url`).
pub const ENV_BOUNCES_PASSWORD: &str = "TIDINGS_BOUNCES_PASSWORD";
/// `tidings serve`'s webhooks (`[webhooks.*]`): Postmark's basic-auth
/// password, Mailgun's webhook signing key, the generic endpoint's HMAC key.
pub const ENV_WEBHOOKS_POSTMARK_PASSWORD: &str = "TIDINGS_WEBHOOKS_POSTMARK_PASSWORD";
pub const ENV_WEBHOOKS_MAILGUN_KEY: &str = "TIDINGS_WEBHOOKS_MAILGUN_KEY";
pub const ENV_WEBHOOKS_SECRET: &str = "TIDINGS_WEBHOOKS_SECRET";
const ENV_NOT_KEYS: &[&str] = &[
    ENV_SMTP_PASSWORD,
    ENV_WEBHOOKS_POSTMARK_PASSWORD,
    ENV_WEBHOOKS_MAILGUN_KEY,
    ENV_WEBHOOKS_SECRET,
    ENV_BOUNCES_PASSWORD,
    ENV_UNSUBSCRIBE_SECRET,
    ENV_DATABASE_URL,
    ENV_DKIM_PRIVATE_KEY,
    "TIDINGS_CONFIG",
    "TIDINGS_LOG",
];

pub const DEFAULT_DATABASE: &str = "sqlite:subscribers/subscribers.db";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `sqlite:path` or `postgres://…`
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub newsletter: Newsletter,
    #[serde(default)]
    pub smtp: Smtp,
    #[serde(default)]
    pub send: SendSettings,
    #[serde(default)]
    pub dkim: Dkim,
    #[serde(default)]
    pub bounces: Bounces,
    #[serde(default)]
    pub webhooks: Webhooks,
    /// Secrets from the environment; never read from or written to a file.
    #[serde(skip)]
    pub secrets: Secrets,
    /// Where the config was read from, for messages and relative paths.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

fn default_database() -> String {
    DEFAULT_DATABASE.to_string()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: default_database(),
            newsletter: Newsletter::default(),
            smtp: Smtp::default(),
            send: SendSettings::default(),
            dkim: Dkim::default(),
            bounces: Bounces::default(),
            webhooks: Webhooks::default(),
            secrets: Secrets::default(),
            origin: None,
        }
    }
}

/// The newsletter's identity: everything the templates show that is not
/// issue content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Newsletter {
    pub name: String,
    /// `Name <address>` or a bare address.
    pub from: String,
    pub reply_to: String,
    pub postal_address: String,
    /// The organisation's website.
    pub website: String,
    /// Where `tidings serve` is reachable: unsubscribe and view-in-browser links.
    pub base_url: String,
    pub logo_url: String,
    pub logo_alt: String,
    pub phone: String,
    /// The standing call to action in the header ("Get Help Now").
    pub help_label: String,
    pub help_url: String,
    /// The call to action at the end ("Join the movement…").
    pub join_text: String,
    pub join_label: String,
    pub join_url: String,
    /// Address for mailto unsubscribes in `List-Unsubscribe`.
    pub unsubscribe_mailto: String,
    /// `List-Id`; derived from `from` when empty.
    pub list_id: String,
    pub quick_links: Vec<Link>,
    /// Brand colour for buttons and headings.
    pub accent_color: String,
}

impl Default for Newsletter {
    fn default() -> Self {
        Newsletter {
            name: "Newsletter".into(),
            from: String::new(),
            reply_to: String::new(),
            postal_address: String::new(),
            website: String::new(),
            base_url: "http://localhost:8080".into(),
            logo_url: String::new(),
            logo_alt: String::new(),
            phone: String::new(),
            help_label: String::new(),
            help_url: String::new(),
            join_text: String::new(),
            join_label: String::new(),
            join_url: String::new(),
            unsubscribe_mailto: String::new(),
            list_id: String::new(),
            quick_links: Vec::new(),
            accent_color: "#1f6f78".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub label: String,
    pub url: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text: only for a loopback relay unless `allow_insecure`.
    None,
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::Starttls),
            "tls" => Ok(TlsMode::Tls),
            other => Err(format!(
                "unknown TLS mode `{other}`: use \"none\", \"starttls\" or \"tls\""
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    pub host: String,
    /// Defaults by TLS mode: 25 (none), 587 (starttls), 465 (tls).
    #[serde(deserialize_with = "lenient_opt")]
    pub port: Option<u16>,
    #[serde(deserialize_with = "lenient")]
    pub tls: TlsMode,
    pub username: String,
    /// Allow `tls = "none"` to a host that is not on loopback.
    #[serde(deserialize_with = "lenient")]
    pub allow_insecure: bool,
    /// Connect and per-command timeout, seconds.
    #[serde(deserialize_with = "lenient")]
    pub timeout_secs: u64,
    /// EHLO name; the machine's hostname when empty.
    pub hello_name: String,
    /// PEM file of a private CA that signed the relay's certificate, trusted
    /// besides the public roots.
    pub ca_file: String,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            host: "localhost".into(),
            port: None,
            tls: TlsMode::default(),
            username: String::new(),
            allow_insecure: false,
            timeout_secs: 30,
            hello_name: String::new(),
            ca_file: String::new(),
        }
    }
}

impl Smtp {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        })
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendSettings {
    #[serde(deserialize_with = "lenient")]
    pub rate: Rate,
    /// SMTP connections (and messages in flight) at once.
    #[serde(deserialize_with = "lenient")]
    pub concurrency: usize,
    /// Attempts per recipient for transient failures (4xx, timeouts, drops).
    #[serde(deserialize_with = "lenient")]
    pub max_attempts: u32,
    /// First retry delay in seconds; doubles on each attempt.
    #[serde(deserialize_with = "lenient")]
    pub retry_base_secs: f64,
    /// Pause the send after this many failures in a row.
    #[serde(deserialize_with = "lenient")]
    pub pause_after_failures: u32,
    /// …or when this share of attempts failed, once `pause_min_attempts` were made.
    #[serde(deserialize_with = "lenient")]
    pub pause_failure_ratio: f64,
    #[serde(deserialize_with = "lenient")]
    pub pause_min_attempts: u32,
    /// A scheduled send (`--not-before`) that first starts later than this
    /// after its time is refused (a machine that was off for a week must
    /// not mail last week's announcement).
    pub stale_after: Span,
}

impl Default for SendSettings {
    fn default() -> Self {
        SendSettings {
            rate: Rate::per_second(10),
            concurrency: 4,
            max_attempts: 5,
            retry_base_secs: 30.0,
            pause_after_failures: 10,
            pause_failure_ratio: 0.05,
            pause_min_attempts: 100,
            stale_after: Span(Duration::from_secs(48 * 3600)),
        }
    }
}

/// Optional DKIM signing. The private key comes from `key_file` or the
/// `TIDINGS_DKIM_PRIVATE_KEY` environment variable.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Dkim {
    pub domain: String,
    pub selector: String,
    pub key_file: String,
}

impl Dkim {
    pub fn enabled(&self) -> bool {
        !self.selector.is_empty()
    }
}

/// Bounces and complaints that arrive by mail (issue 12): the VERP
/// envelope sender and the mailbox they are fetched from. The IMAP password
/// comes only from `TIDINGS_BOUNCES_PASSWORD`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounces {
    /// Envelope sender (Return-Path) base, e.g. `bounces@news.example.org`:
    /// when set, each message goes out from `bounces+<tag>@…`.
    pub address: String,
    /// `imaps://host[:port]/FOLDER` (TLS) or `imap://host[:port]/FOLDER`
    /// (STARTTLS, required); the folder defaults to INBOX.
    pub imap_url: String,
    pub username: String,
    /// Where processed reports are moved (created when missing).
    pub processed_folder: String,
    /// Soft bounces within the last 5 sends before the address is suppressed.
    #[serde(deserialize_with = "lenient")]
    pub soft_limit: u32,
    /// PEM file of a private CA for the IMAP server's certificate, trusted
    /// besides the public roots (as `smtp.ca_file`).
    pub ca_file: String,
}

impl Default for Bounces {
    fn default() -> Self {
        Bounces {
            address: String::new(),
            imap_url: String::new(),
            username: String::new(),
            processed_folder: "Processed".into(),
            soft_limit: 3,
            ca_file: String::new(),
        }
    }
}

/// Provider webhooks in `tidings serve` (bounces and complaints reported
/// over HTTP). Each endpoint is on only when its table is present; its
/// secret comes only from the environment.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// `POST /webhooks/ses`: Amazon SES notifications through SNS.
    pub ses: Option<SesWebhook>,
    /// `POST /webhooks/postmark`: basic auth, password from
    /// `TIDINGS_WEBHOOKS_POSTMARK_PASSWORD`.
    pub postmark: Option<PostmarkWebhook>,
    /// `POST /webhooks/mailgun`: signing key from `TIDINGS_WEBHOOKS_MAILGUN_KEY`.
    pub mailgun: Option<MailgunWebhook>,
    /// `POST /webhooks/generic`: HMAC key from `TIDINGS_WEBHOOKS_SECRET`.
    pub generic: Option<GenericWebhook>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SesWebhook {
    /// The SNS topics whose notifications are accepted. Required: a valid
    /// SNS signature only proves that *some* AWS account's topic sent it.
    #[serde(deserialize_with = "string_list")]
    pub topic_arns: Vec<String>,
    /// TESTS ONLY: also accept signing certificates (and SubscribeURLs)
    /// from this exact `host:port`, still over https.
    pub test_cert_host: String,
    /// TESTS ONLY: PEM of a private CA for `test_cert_host`'s certificate.
    pub ca_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PostmarkWebhook {
    /// The basic-auth user name set in Postmark's webhook URL.
    pub username: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailgunWebhook {
    /// Requests whose signed timestamp is further than this from now are
    /// refused (replays).
    pub max_age: Span,
}

impl Default for MailgunWebhook {
    fn default() -> Self {
        MailgunWebhook {
            max_age: Span(Duration::from_secs(300)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GenericWebhook {}

impl Webhooks {
    /// Each problem names its key.
    fn validate(&self) -> Result<(), String> {
        if let Some(ses) = &self.ses {
            if ses.topic_arns.is_empty() {
                return Err("webhooks.ses.topic_arns is empty: list the SNS topic ARNs whose notifications to accept, e.g. [\"arn:aws:sns:eu-west-1:123456789012:ses-bounces\"]".into());
            }
            for arn in &ses.topic_arns {
                let parts: Vec<&str> = arn.split(':').collect();
                if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty()
                {
                    return Err(format!(
                        "webhooks.ses.topic_arns: `{arn}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)"
                    ));
                }
            }
            // Either alone would be a half-relaxed check: both or neither.
            if ses.test_cert_host.is_empty() != ses.ca_file.is_empty() {
                return Err("webhooks.ses.test_cert_host and webhooks.ses.ca_file go together, and only in tests: remove them in production".into());
            }
        }
        if let Some(p) = &self.postmark
            && p.username.trim().is_empty()
        {
            return Err("webhooks.postmark.username is empty: set the user name of the basic auth in Postmark's webhook URL".into());
        }
        if let Some(m) = &self.mailgun
            && (m.max_age.0.is_zero() || m.max_age.0 > Duration::from_secs(86_400))
        {
            return Err(format!(
                "webhooks.mailgun.max_age `{}` must be between 1s and 1d (default 5m)",
                m.max_age
            ));
        }
        Ok(())
    }
}

/// A list of strings, or (from the environment) one string of items
/// separated by commas or spaces.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s
            .split([',', ' '])
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(serde::de::Error::custom(format!(
                    "expected a list of strings, found {}",
                    other.type_str()
                ))),
            })
            .collect(),
        other => Err(serde::de::Error::custom(format!(
            "expected a list of strings, found {}",
            other.type_str()
        ))),
    }
}

/// A steady sending rate: `count` messages per `per`; a count of 0 is
/// "unlimited" (benchmarks, a relay that does its own pacing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_second(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
        }
    }
    /// The steady interval between two messages.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
    pub fn per_second_f64(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
    pub fn is_unlimited(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            return f.write_str("unlimited");
        }
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => return write!(f, "{}/{}s", self.count, self.per.as_secs()),
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let help = "write it as a count per unit, e.g. \"14/s\", \"300/min\" or \"2000/h\" (or \"unlimited\")";
        if s.trim() == "unlimited" {
            return Ok(Rate {
                count: 0,
                per: Duration::from_secs(1),
            });
        }
        let (count, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid rate `{s}`: {help}"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("invalid rate `{s}`: `{count}` is not a whole number; {help}"))?;
        if count == 0 {
            return Err(format!(
                "invalid rate `{s}`: the count must be above 0 (\"unlimited\" for no limit)"
            ));
        }
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            other => {
                return Err(format!(
                    "invalid rate `{s}`: unknown unit `{other}`; {help}"
                ));
            }
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A length of time as people write it: `90m`, `48h`, `2d` (or seconds,
/// `30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            // Days only past a few: "48h" reads better than "2d".
            _ if s.is_multiple_of(86_400) && s >= 7 * 86_400 => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3600) && s > 0 => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) && s > 0 => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        let t = s.trim();
        let help = "write a number and a unit, e.g. \"90m\", \"48h\" or \"2d\"";
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("invalid length of time `{s}`: {help}"))?;
        let secs = match unit.trim() {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("invalid length of time `{s}`: {help}")),
        };
        Ok(Span(Duration::from_secs(n.saturating_mul(secs))))
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A value that must never be printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub smtp_password: Option<Secret>,
    pub unsubscribe_secret: Option<Secret>,
    pub dkim_private_key: Option<Secret>,
    pub bounces_password: Option<Secret>,
    pub webhooks_postmark_password: Option<Secret>,
    pub webhooks_mailgun_key: Option<Secret>,
    pub webhooks_secret: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Other { origin: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

impl Config {
    /// Parses config text; `origin` names it in errors (usually the path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, std::iter::empty())
    }

    /// Parses config text, then applies `TIDINGS_*` overrides from `env`.
    pub fn parse_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // First pass straight from the text, so that errors carry a line.
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
        let mut overridden = Vec::new();
        let mut secrets = Secrets::default();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("TIDINGS_") else {
                continue;
            };
            // The test harness' own variables (scripts/test.sh).
            if rest.starts_with("TEST_") {
                continue;
            }
            match var.as_str() {
                ENV_SMTP_PASSWORD => secrets.smtp_password = Some(Secret(value)),
                ENV_UNSUBSCRIBE_SECRET => secrets.unsubscribe_secret = Some(Secret(value)),
                ENV_DKIM_PRIVATE_KEY => secrets.dkim_private_key = Some(Secret(value)),
                ENV_BOUNCES_PASSWORD => secrets.bounces_password = Some(Secret(value)),
                ENV_WEBHOOKS_POSTMARK_PASSWORD => {
                    secrets.webhooks_postmark_password = Some(Secret(value))
                }
                ENV_WEBHOOKS_MAILGUN_KEY => secrets.webhooks_mailgun_key = Some(Secret(value)),
                ENV_WEBHOOKS_SECRET => secrets.webhooks_secret = Some(Secret(value)),
                ENV_DATABASE_URL | "TIDINGS_DATABASE" => {
                    table.insert("database".into(), toml::Value::String(value));
                    overridden.push(var.clone());
                }
                v if ENV_NOT_KEYS.contains(&v) => {}
                _ => {
                    let (section, key) = env_key(rest).ok_or_else(|| ConfigError::Env {
                        var: var.clone(),
                        message: format!(
                            "not a config key; overrides are TIDINGS_<SECTION>_<KEY> with a section of {}",
                            SECTIONS.join(", ")
                        ),
                    })?;
                    if section == "newsletter" && key == "quick_links" {
                        return Err(ConfigError::Env {
                            var,
                            message: "quick links are a list: set them in the config file".into(),
                        });
                    }
                    let (sub, key) = subsection(section, &key);
                    let mut entry = table
                        .entry(section.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let Some(sub) = sub {
                        entry = match entry {
                            toml::Value::Table(t) => t
                                .entry(sub.to_string())
                                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
                            other => other,
                        };
                    }
                    if let toml::Value::Table(t) = entry {
                        t.insert(key.to_string(), toml::Value::String(value));
                    }
                    overridden.push(var.clone());
                }
            }
        }
        if !overridden.is_empty() {
            let base = table.clone();
            config = Config::deserialize(table).map_err(|e| {
                // Name the variable that broke it: the first one that, set
                // alone over the file, fails the same way.
                let culprit = overridden.iter().find(|var| {
                    Config::deserialize(base_without_overrides(&base, &overridden, var)).is_err()
                });
                match culprit {
                    Some(var) => ConfigError::Env {
                        var: var.clone(),
                        message: e.message().to_string(),
                    },
                    None => ConfigError::Other {
                        origin: format!("{origin} with {}", overridden.join(", ")),
                        message: e.message().to_string(),
                    },
                }
            })?;
        }
        config.secrets = secrets;
        config.validate(origin)?;
        Ok(config)
    }

    /// Loads `path` (or `./tidings.toml`; a missing default file means
    /// defaults) and applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match std::env::var_os("TIDINGS_CONFIG") {
                Some(p) => (PathBuf::from(p), true),
                None => (PathBuf::from("tidings.toml"), false),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let mut config =
            Config::parse_with_env(&text, &path.display().to_string(), std::env::vars())?;
        config.origin = Some(path);
        Ok(config)
    }

    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.origin
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError::Other {
            origin: origin.to_string(),
            message,
        };
        if let Err(e) = check_concurrency(self.send.concurrency) {
            return Err(err(format!("send.concurrency {e}")));
        }
        if self.send.max_attempts == 0 {
            return Err(err("send.max_attempts must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.send.pause_failure_ratio) {
            return Err(err(
                "send.pause_failure_ratio is a share between 0 and 1 (0.05 = 5%)".into(),
            ));
        }
        let url = &self.newsletter.base_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(err(format!(
                "newsletter.base_url `{url}` must start with https:// (where `tidings serve` is reachable)"
            )));
        }
        if !valid_base_url(url) {
            return Err(err(format!(
                "newsletter.base_url `{}` is not a valid absolute URL: write it as https://host[:port][/path], without spaces or quotes",
                url.trim()
            )));
        }
        self.bounces.validate().map_err(err)?;
        self.webhooks.validate().map_err(err)?;
        let colour = &self.newsletter.accent_color;
        if !valid_css_colour(colour) {
            return Err(err(format!(
                "newsletter.accent_color `{colour}` is not a CSS colour: write it as #rrggbb (e.g. #1f6f78), rgb(…) or a colour name"
            )));
        }
        Ok(())
    }

    /// `List-Id` value: the configured one, else derived from the sender.
    pub fn list_id(&self) -> String {
        let n = &self.newsletter;
        if !n.list_id.is_empty() {
            return n.list_id.clone();
        }
        let domain = sender_domain(&n.from).unwrap_or("localhost");
        // A List-Id is ASCII (RFC 2919): an international domain as A-label.
        let domain = match domain.is_ascii() {
            true => domain.to_string(),
            false => idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_string()),
        };
        let slug: String = n
            .name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let slug = slug.trim_matches('-');
        let slug = if slug.is_empty() { "newsletter" } else { slug };
        format!("{} <{slug}.{domain}>", n.name)
    }
}

/// The domain of a `Name <a@b>` or `a@b` sender.
pub fn sender_domain(from: &str) -> Option<&str> {
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from,
    };
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim())
        .filter(|d| !d.is_empty())
}

const SECTIONS: &[&str] = &["newsletter", "smtp", "send", "dkim", "bounces", "webhooks"];

/// Tables inside a section: `TIDINGS_WEBHOOKS_POSTMARK_USERNAME` is
/// `webhooks.postmark.username`.
const SUBSECTIONS: &[(&str, &[&str])] = &[("webhooks", &["ses", "postmark", "mailgun", "generic"])];

/// (`Some("postmark")`, `"username"`) for section `webhooks`, key
/// `postmark_username`; (`None`, key) elsewhere.
fn subsection<'a>(section: &str, key: &'a str) -> (Option<&'static str>, &'a str) {
    SUBSECTIONS
        .iter()
        .filter(|(s, _)| *s == section)
        .flat_map(|(_, subs)| subs.iter())
        .find_map(|sub| {
            key.strip_prefix(sub)
                .and_then(|k| k.strip_prefix('_'))
                .filter(|k| !k.is_empty())
                .map(|k| (Some(*sub), k))
        })
        .unwrap_or((None, key))
}

impl Bounces {
    /// Each problem names its key.
    fn validate(&self) -> Result<(), String> {
        if !self.address.trim().is_empty() {
            BounceAddress::parse(&self.address).map_err(|e| format!("bounces.address {e}"))?;
        }
        if self.soft_limit == 0 {
            return Err(
                "bounces.soft_limit must be at least 1 (soft bounces within the last 5 sends)"
                    .into(),
            );
        }
        if !self.imap_url.trim().is_empty() {
            let url =
                ImapUrl::parse(&self.imap_url).map_err(|e| format!("bounces.imap_url {e}"))?;
            let processed = self.processed_folder.trim();
            if processed.is_empty() {
                return Err(
                    "bounces.processed_folder is empty: name the folder processed reports move to, e.g. \"Processed\""
                        .into(),
                );
            }
            if processed == url.folder {
                return Err(format!(
                    "bounces.processed_folder `{processed}` is the folder bounces.imap_url reads: use another one, e.g. \"Processed\""
                ));
            }
        }
        Ok(())
    }

    /// The bounce address split for tagging, when set.
    pub fn bounce_address(&self) -> Option<BounceAddress> {
        BounceAddress::parse(&self.address).ok()
    }
}

/// `SMTP_ALLOW_INSECURE` -> ("smtp", "allow_insecure").
fn env_key(rest: &str) -> Option<(&'static str, String)> {
    let lower = rest.to_ascii_lowercase();
    SECTIONS.iter().find_map(|s| {
        lower
            .strip_prefix(s)
            .and_then(|k| k.strip_prefix('_'))
            .filter(|k| !k.is_empty())
            .map(|k| (*s, k.to_string()))
    })
}

fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    let mut message = e.message().trim().to_string();
    if message.starts_with("unknown field") {
        // serde says "field"; users of a TOML file think in keys.
        message = message.replacen("unknown field", "unknown key", 1);
        message.push_str("; check the spelling or remove it");
    }
    let in_bounces = e
        .span()
        .and_then(|s| key_at(text, s.start))
        .is_some_and(|k| k.starts_with("bounces."));
    let in_webhooks = e
        .span()
        .and_then(|s| key_at(text, s.start))
        .filter(|k| k.starts_with("webhooks."));
    if let Some(key) = in_webhooks
        && message.starts_with("unknown key")
        && ["password", "key", "secret", "token"].iter().any(|w| {
            message.contains(&format!("unknown key `{w}")) || message.contains(&format!("_{w}`"))
        })
    {
        let var = if key.starts_with("webhooks.postmark.") {
            ENV_WEBHOOKS_POSTMARK_PASSWORD
        } else if key.starts_with("webhooks.mailgun.") {
            ENV_WEBHOOKS_MAILGUN_KEY
        } else {
            ENV_WEBHOOKS_SECRET
        };
        message.push_str(&format!(
            "; webhook secrets are never read from the file: set {var}"
        ));
    } else if message.contains("password") && in_bounces {
        message.push_str(&format!(
            "; the IMAP password is never read from the file: set {ENV_BOUNCES_PASSWORD}"
        ));
    } else if message.contains("password") {
        message.push_str(&format!(
            "; the SMTP password is never read from the file: set {ENV_SMTP_PASSWORD}"
        ));
    } else if message.contains("unknown key `unsubscribe_secret`") {
        message.push_str(&format!(
            "; the unsubscribe secret is never read from the file: set {ENV_UNSUBSCRIBE_SECRET}"
        ));
    } else if !message.starts_with("unknown key")
        && let Some(key) = e.span().and_then(|s| key_at(text, s.start))
    {
        message = format!("`{key}`: {message}");
    }
    ConfigError::Invalid {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

/// The dotted key (`send.concurrency`) whose value is at byte `offset`:
/// the line's key under the last `[section]` header above it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        match l.strip_prefix("[[") {
            Some(array) => Some(format!("{}[]", array.trim_end_matches(']').trim())),
            None => l
                .starts_with('[')
                .then(|| l.trim_matches(['[', ']']).trim().to_string()),
        }
    });
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// The most SMTP connections (and messages in flight) at once: more only
/// gets a sender throttled or blocked by the receiving servers.
pub const MAX_CONCURRENCY: usize = 100;

/// `--concurrency` and `send.concurrency`: 1 to [`MAX_CONCURRENCY`].
pub fn check_concurrency(n: usize) -> Result<usize, String> {
    if (1..=MAX_CONCURRENCY).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 1 and {MAX_CONCURRENCY}"))
    }
}

/// Why an unsubscribe secret is not good enough, if it is not: at least
/// 16 characters (not bytes), and not a few characters repeated.
pub fn unsubscribe_secret_problem(secret: &str) -> Option<String> {
    const HOW: &str = "use at least 16 random characters, e.g. `openssl rand -hex 32`";
    let chars = secret.chars().count();
    if chars < 16 {
        return Some(format!(
            "{ENV_UNSUBSCRIBE_SECRET} is too short ({chars} characters): {HOW}"
        ));
    }
    let distinct = secret
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // 16 random hex digits have about ten different ones; fewer than six is
    // a pattern, not a secret.
    if distinct < 6 {
        let ones = if distinct == 1 { "one" } else { "ones" };
        return Some(format!(
            "{ENV_UNSUBSCRIBE_SECRET} is too weak: its {chars} characters are only {distinct} different {ones}; {HOW}"
        ));
    }
    None
}

/// An absolute http(s) URL with a host, and nothing a link or header
/// could trip on (spaces, controls, quotes, angle brackets).
fn valid_base_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
            h
        } else {
            host
        }
    });
    !host_name.is_empty()
        && host_name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
        && !url.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`')
        })
}

/// A CSS colour as templates put it in `style` attributes: `#rgb`,
/// `#rrggbb` (with alpha too), a name, or `rgb()`/`hsl()` of numbers.
fn valid_css_colour(c: &str) -> bool {
    if let Some(hex) = c.strip_prefix('#') {
        return matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    if !c.is_empty() && c.len() <= 30 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
        return true;
    }
    let lower = c.to_ascii_lowercase();
    ["rgb(", "rgba(", "hsl(", "hsla("].iter().any(|f| {
        lower
            .strip_prefix(f)
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|args| {
                !args.trim().is_empty()
                    && args.chars().all(|ch| {
                        ch.is_ascii_digit() || matches!(ch, ' ' | ',' | '.' | '%' | '/' | '-')
                    })
            })
    })
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// `table` with every overridden key but `keep` taken out (their defaults
/// apply); database overrides stay.
fn base_without_overrides(table: &toml::Table, overridden: &[String], keep: &str) -> toml::Table {
    let mut out = table.clone();
    for var in overridden {
        if var == keep {
            continue;
        }
        if let Some((section, key)) = env_key(&var["TIDINGS_".len()..])
            && let Some(toml::Value::Table(t)) = out.get_mut(section)
        {
            match subsection(section, &key) {
                (Some(sub), k) => {
                    if let Some(toml::Value::Table(t)) = t.get_mut(sub) {
                        t.remove(k);
                    }
                }
                (None, k) => {
                    t.remove(k);
                }
            }
        }
    }
    out
}

/// Numbers and booleans from the file come typed; from the environment they
/// come as strings. Accept both.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: fmt::Display,
{
    let wanted = match std::any::type_name::<T>() {
        "u8" | "u16" | "u32" | "u64" | "usize" => Some("a whole number"),
        "f32" | "f64" => Some("a number"),
        "bool" => Some("true or false"),
        _ => None,
    };
    // Read as a TOML value first (not an untagged enum, whose error says
    // nothing of what was wrong), then say what was expected.
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => s.trim().parse().map_err(|e: T::Err| match wanted {
            Some(wanted) => {
                serde::de::Error::custom(format!("expected {wanted}, found `{}`", s.trim()))
            }
            None => serde::de::Error::custom(e),
        }),
        value => {
            let found = match &value {
                toml::Value::Integer(i) => format!("an integer ({i})"),
                toml::Value::Float(f) => format!("a float ({f})"),
                toml::Value::Boolean(b) => format!("a boolean ({b})"),
                toml::Value::Datetime(d) => format!("a date ({d})"),
                toml::Value::Array(_) => "an array".to_string(),
                toml::Value::Table(_) => "a table".to_string(),
                toml::Value::String(_) => unreachable!("handled above"),
            };
            T::deserialize(value).map_err(|e| match wanted {
                Some(wanted) => {
                    serde::de::Error::custom(format!("expected {wanted}, found {found}"))
                }
                None => serde::de::Error::custom(e),
            })
        }
    }
}

fn lenient_opt<'de, D>(d: D) -> Result<Option<u16>, D::Error>
where
    D: Deserializer<'de>,
{
    lenient::<D, u16>(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_config_is_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.database, DEFAULT_DATABASE);
        assert_eq!(c.smtp.port(), 587);
        assert_eq!(c.send.rate, Rate::per_second(10));
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let err = Config::parse("[smtp]\nhost = \"x\"\nhots = \"y\"\n", "site/tidings.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("site/tidings.toml:3:1: unknown key `hots`"),
            "{err}"
        );
    }

    #[test]
    fn password_in_file_is_refused_with_the_variable_to_use() {
        let err = Config::parse("[smtp]\npassword = \"hunter2\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `password`"), "{err}");
        assert!(err.contains("TIDINGS_SMTP_PASSWORD"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn env_overrides_every_section_with_types() {
        let c = Config::parse_with_env(
            "[smtp]\nhost = \"mail.example.org\"\nport = 2525\n",
            "t.toml",
            env(&[
                ("TIDINGS_SMTP_PORT", "1025"),
                ("TIDINGS_SMTP_TLS", "none"),
                ("TIDINGS_SMTP_ALLOW_INSECURE", "true"),
                ("TIDINGS_SEND_RATE", "300/min"),
                ("TIDINGS_SEND_CONCURRENCY", "8"),
                ("TIDINGS_NEWSLETTER_POSTAL_ADDRESS", "1 Main St"),
                ("TIDINGS_DATABASE_URL", "postgres://x/y"),
                ("TIDINGS_SMTP_PASSWORD", "s3cret"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.smtp.host, "mail.example.org");
        assert_eq!(c.smtp.port(), 1025);
        assert_eq!(c.smtp.tls, TlsMode::None);
        assert!(c.smtp.allow_insecure);
        assert_eq!(c.send.rate.to_string(), "300/min");
        assert_eq!(c.send.concurrency, 8);
        assert_eq!(c.newsletter.postal_address, "1 Main St");
        assert_eq!(c.database, "postgres://x/y");
        assert_eq!(c.secrets.smtp_password.unwrap().expose(), "s3cret");
    }

    #[test]
    fn env_unknown_key_and_bad_value_are_errors() {
        let err = Config::parse_with_env("", "t.toml", env(&[("TIDINGS_SMTP_HSOT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `hsot`"), "{err}");
        assert!(err.contains("TIDINGS_SMTP_HSOT"), "{err}");
        let err = Config::parse_with_env("", "t.toml", env(&[("TIDINGS_SEND_RATE", "fast")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid rate `fast`"), "{err}");
        let err = Config::parse_with_env("", "t.toml", env(&[("TIDINGS_FOO", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIDINGS_FOO: not a config key"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c =
            Config::parse_with_env("", "t", env(&[("TIDINGS_SMTP_PASSWORD", "hunter2")])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn rates() {
        assert_eq!(
            "14/s".parse::<Rate>().unwrap().interval().as_micros(),
            71428
        );
        assert_eq!("2000/h".parse::<Rate>().unwrap().to_string(), "2000/h");
        assert!("0/s".parse::<Rate>().is_err());
        assert!(
            "10/day"
                .parse::<Rate>()
                .unwrap_err()
                .contains("unknown unit")
        );
        let err = Config::parse("[send]\nrate = \"10/d\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml:2:8: `send.rate`: invalid rate"),
            "{err}"
        );
    }

    #[test]
    fn list_id_from_sender() {
        let c = Config::parse(
            "[newsletter]\nname = \"Recovery Voices\"\nfrom = \"RV <news@example.org>\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.list_id(), "Recovery Voices <recovery-voices.example.org>");
    }

    fn parse_err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn type_errors_name_the_key_and_the_type() {
        assert_eq!(
            parse_err("[send]\nconcurrency = true\n"),
            "t.toml:2:15: `send.concurrency`: expected a whole number, found a boolean (true)"
        );
        assert_eq!(
            parse_err("[smtp]\nport = [25]\n"),
            "t.toml:2:8: `smtp.port`: expected a whole number, found an array"
        );
        assert_eq!(
            parse_err("[[newsletter.quick_links]]\nlabel = \"a\"\nurl = 5\n"),
            "t.toml:3:7: `newsletter.quick_links[].url`: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            parse_err("[send]\nretry_base_secs = \"soon\"\n"),
            "t.toml:2:19: `send.retry_base_secs`: expected a number, found `soon`"
        );
    }

    #[test]
    fn concurrency_has_bounds() {
        assert_eq!(
            parse_err("[send]\nconcurrency = 0\n"),
            "t.toml: send.concurrency must be between 1 and 100"
        );
        assert_eq!(
            parse_err("[send]\nconcurrency = 100000\n"),
            "t.toml: send.concurrency must be between 1 and 100"
        );
        assert_eq!(
            check_concurrency(0),
            Err("must be between 1 and 100".to_string())
        );
        assert_eq!(check_concurrency(100), Ok(100));
    }

    #[test]
    fn the_unsubscribe_secret_in_the_file_names_the_variable() {
        assert_eq!(
            parse_err("[newsletter]\nunsubscribe_secret = \"abc\"\n"),
            "t.toml:2:1: unknown key `unsubscribe_secret`, expected one of `name`, `from`, `reply_to`, `postal_address`, `website`, `base_url`, `logo_url`, `logo_alt`, `phone`, `help_label`, `help_url`, `join_text`, `join_label`, `join_url`, `unsubscribe_mailto`, `list_id`, `quick_links`, `accent_color`; check the spelling or remove it; the unsubscribe secret is never read from the file: set TIDINGS_UNSUBSCRIBE_SECRET"
        );
        assert!(parse_err("unsubscribe_secret = \"abc\"\n").ends_with(
            "the unsubscribe secret is never read from the file: set TIDINGS_UNSUBSCRIBE_SECRET"
        ));
    }

    #[test]
    fn weak_unsubscribe_secrets_are_refused() {
        assert_eq!(
            unsubscribe_secret_problem("aaaaaaaaaaaaaaaa"),
            Some("TIDINGS_UNSUBSCRIBE_SECRET is too weak: its 16 characters are only 1 different one; use at least 16 random characters, e.g. `openssl rand -hex 32`".to_string())
        );
        assert_eq!(
            unsubscribe_secret_problem("abababababababababab"),
            Some("TIDINGS_UNSUBSCRIBE_SECRET is too weak: its 20 characters are only 2 different ones; use at least 16 random characters, e.g. `openssl rand -hex 32`".to_string())
        );
        // Characters, not bytes.
        assert_eq!(
            unsubscribe_secret_problem("ééééééé"),
            Some("TIDINGS_UNSUBSCRIBE_SECRET is too short (7 characters): use at least 16 random characters, e.g. `openssl rand -hex 32`".to_string())
        );
        assert_eq!(unsubscribe_secret_problem("3f9c0a7be21d4e58"), None);
    }

    #[test]
    fn base_url_must_be_a_valid_absolute_url() {
        for bad in [
            "https://news.example.org/a b",
            "https:// news.example.org",
            "https://",
            "https:///path",
            "https://news.example.org\t",
            "https://news.example.org/\"><script>",
        ] {
            let text = format!(
                "[newsletter]\nbase_url = {}\n",
                toml::Value::String(bad.into())
            );
            assert_eq!(
                parse_err(&text),
                format!(
                    "t.toml: newsletter.base_url `{}` is not a valid absolute URL: write it as https://host[:port][/path], without spaces or quotes",
                    bad.trim()
                ),
                "{bad:?}"
            );
        }
        assert!(
            Config::parse(
                "[newsletter]\nbase_url = \"https://news.example.org:8443/n/\"\n",
                "t"
            )
            .is_ok()
        );
    }

    #[test]
    fn webhooks_from_file_and_environment() {
        let c = Config::parse_with_env(
            "[webhooks.postmark]\nusername = \"pm\"\n[webhooks.generic]\n",
            "t.toml",
            env(&[
                ("TIDINGS_WEBHOOKS_POSTMARK_USERNAME", "postmark"),
                (
                    "TIDINGS_WEBHOOKS_SES_TOPIC_ARNS",
                    "arn:aws:sns:eu-west-1:1:a, arn:aws:sns:eu-west-1:1:b",
                ),
                ("TIDINGS_WEBHOOKS_MAILGUN_MAX_AGE", "10m"),
                ("TIDINGS_WEBHOOKS_POSTMARK_PASSWORD", "pm-secret"),
                ("TIDINGS_WEBHOOKS_MAILGUN_KEY", "mg-secret"),
                ("TIDINGS_WEBHOOKS_SECRET", "generic-secret"),
            ]),
        )
        .unwrap();
        let w = &c.webhooks;
        assert_eq!(w.postmark.as_ref().unwrap().username, "postmark");
        assert_eq!(
            w.ses.as_ref().unwrap().topic_arns,
            ["arn:aws:sns:eu-west-1:1:a", "arn:aws:sns:eu-west-1:1:b"]
        );
        assert_eq!(w.mailgun.as_ref().unwrap().max_age.to_string(), "10m");
        assert!(w.generic.is_some());
        assert_eq!(
            c.secrets
                .webhooks_postmark_password
                .as_ref()
                .unwrap()
                .expose(),
            "pm-secret"
        );
        let shown = format!("{c:?}");
        for secret in ["pm-secret", "mg-secret", "generic-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Off unless configured.
        let c = Config::parse("", "t").unwrap();
        assert!(c.webhooks.ses.is_none() && c.webhooks.postmark.is_none());
        assert!(c.webhooks.mailgun.is_none() && c.webhooks.generic.is_none());
    }

    #[test]
    fn webhook_config_errors_name_the_key() {
        assert_eq!(
            parse_err("[webhooks.ses]\n"),
            "t.toml: webhooks.ses.topic_arns is empty: list the SNS topic ARNs whose notifications to accept, e.g. [\"arn:aws:sns:eu-west-1:123456789012:ses-bounces\"]"
        );
        assert_eq!(
            parse_err("[webhooks.ses]\ntopic_arns = [\"arn:aws:s3:::bucket\"]\n"),
            "t.toml: webhooks.ses.topic_arns: `arn:aws:s3:::bucket` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)"
        );
        assert_eq!(
            parse_err(
                "[webhooks.ses]\ntopic_arns = [\"arn:aws:sns:eu-west-1:1:b\"]\nca_file = \"ca.pem\"\n"
            ),
            "t.toml: webhooks.ses.test_cert_host and webhooks.ses.ca_file go together, and only in tests: remove them in production"
        );
        assert_eq!(
            parse_err("[webhooks.postmark]\n"),
            "t.toml: webhooks.postmark.username is empty: set the user name of the basic auth in Postmark's webhook URL"
        );
        assert_eq!(
            parse_err("[webhooks.mailgun]\nmax_age = \"0s\"\n"),
            "t.toml: webhooks.mailgun.max_age `0s` must be between 1s and 1d (default 5m)"
        );
        let err = parse_err("[webhooks.mailgun]\nsigning_key = \"key-123\"\n");
        assert!(
            err.ends_with(
                "webhook secrets are never read from the file: set TIDINGS_WEBHOOKS_MAILGUN_KEY"
            ),
            "{err}"
        );
        assert!(!err.contains("key-123"), "{err}");
        let err = parse_err("[webhooks.generic]\nsecret = \"abc\"\n");
        assert!(err.ends_with("set TIDINGS_WEBHOOKS_SECRET"), "{err}");
    }

    #[test]
    fn accent_color_must_be_a_css_colour() {
        for bad in [
            "red; background: url(https://x)",
            "#12",
            "#gggggg",
            "\"></style>",
            "rgb(1,2,3);x",
        ] {
            let text = format!(
                "[newsletter]\naccent_color = {}\n",
                toml::Value::String(bad.into())
            );
            assert_eq!(
                parse_err(&text),
                format!(
                    "t.toml: newsletter.accent_color `{bad}` is not a CSS colour: write it as #rrggbb (e.g. #1f6f78), rgb(…) or a colour name"
                ),
                "{bad:?}"
            );
        }
        for good in [
            "#1f6f78",
            "#FFF",
            "#11223344",
            "rebeccapurple",
            "rgb(31, 111, 120)",
            "hsl(185 59% 30%)",
        ] {
            let text = format!("[newsletter]\naccent_color = \"{good}\"\n");
            assert!(Config::parse(&text, "t").is_ok(), "{good}");
        }
    }
}

/// The longest local part an address may have (RFC 5321).
pub const MAX_LOCAL_PART: usize = 64;
/// The longest VERP tag `deliver::verp` makes (checked there at compile
/// time), for the length check of `bounces.address`.
pub const VERP_TAG_MAX: usize = 42;

/// A configured bounce address split for tagging: `local+tag@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceAddress {
    pub local: String,
    pub domain: String,
}

impl BounceAddress {
    /// Parses `bounces@news.example.org`; the error says what is wrong
    /// (the caller adds the config key).
    pub fn parse(address: &str) -> Result<BounceAddress, String> {
        let a = address.trim();
        let (local, domain) = a.rsplit_once('@').ok_or_else(|| {
            format!("`{a}` is not an address: write e.g. bounces@news.example.org")
        })?;
        if local.is_empty() || domain.is_empty() || domain.contains(['@', ' ', '<', '>']) {
            return Err(format!(
                "`{a}` is not an address: write e.g. bounces@news.example.org"
            ));
        }
        if !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "`{a}`: its local part `{local}` may hold only letters, digits, `.`, `_` and `-` (a `+` is where the tag goes)"
            ));
        }
        let most = MAX_LOCAL_PART - 1 - VERP_TAG_MAX;
        if local.len() > most {
            return Err(format!(
                "`{a}`: its local part `{local}` is {} characters; with `+` and a tag of up to {VERP_TAG_MAX} it must stay within {MAX_LOCAL_PART}, so use at most {most} (e.g. `bounces`)",
                local.len()
            ));
        }
        Ok(BounceAddress {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// `local+tag@domain`.
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{}+{tag}@{}", self.local, self.domain)
    }

    /// The tag of `address` if it is `local+tag@domain` (local part and
    /// domain compared without case).
    pub fn tag_of<'a>(&self, address: &'a str) -> Option<&'a str> {
        let (local, domain) = address.trim().rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        let (base, tag) = local.split_once('+')?;
        (base.eq_ignore_ascii_case(&self.local) && !tag.is_empty()).then_some(tag)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapSecurity {
    /// `imaps://`: TLS from the first byte (port 993).
    Tls,
    /// `imap://`: STARTTLS, refused if the server does not offer it (143).
    StartTls,
}

/// `imaps://host[:port]/FOLDER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapUrl {
    pub security: ImapSecurity,
    pub host: String,
    pub port: u16,
    pub folder: String,
}

impl ImapUrl {
    /// The error completes "bounces.imap_url …".
    pub fn parse(url: &str) -> Result<ImapUrl, String> {
        let u = url.trim();
        let how = "write imaps://host[:port]/FOLDER (TLS) or imap://host[:port]/FOLDER (STARTTLS)";
        let (security, rest) = if let Some(r) = u.strip_prefix("imaps://") {
            (ImapSecurity::Tls, r)
        } else if let Some(r) = u.strip_prefix("imap://") {
            (ImapSecurity::StartTls, r)
        } else {
            return Err(format!("`{u}` is not an IMAP URL: {how}"));
        };
        let (authority, folder) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(format!(
                "`{u}` has a user in it: put the user in bounces.username and the password in {ENV_BOUNCES_PASSWORD}"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{u}`: port `{p}` is not a number: {how}"))?;
                (h, port)
            }
            _ => (
                authority,
                match security {
                    ImapSecurity::Tls => 993,
                    ImapSecurity::StartTls => 143,
                },
            ),
        };
        let host = host.trim_matches(['[', ']']);
        if host.is_empty() || host.contains([' ', '?', '#']) {
            return Err(format!("`{u}` has no valid host: {how}"));
        }
        let folder = percent_decode(folder).ok_or_else(|| {
            format!("`{u}`: the folder `{folder}` is not valid percent-encoded UTF-8")
        })?;
        Ok(ImapUrl {
            security,
            host: host.to_string(),
            port,
            folder: if folder.is_empty() {
                "INBOX".into()
            } else {
                folder
            },
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
