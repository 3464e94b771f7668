//! The preview transport: writes each message as `.eml`, plus its HTML and
//! text parts read back from those bytes, and a gallery page (`index.html`)
//! to browse them, with a phone/desktop side-by-side view per message.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::file::unique_stem;
use super::{FailureKind, Outgoing, SendError, Transport};
use crate::diagnostics::Diagnostics;
use crate::render::checks::{GMAIL_CLIP_BYTES, check_html};

pub struct PreviewTransport {
    dir: PathBuf,
    entries: Mutex<Vec<Entry>>,
    /// What the checks found in HTML that Gmail would clip.
    findings: Mutex<Diagnostics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub to: String,
    pub to_header: String,
    pub subject: String,
    pub html_bytes: usize,
    pub html_kb: String,
    pub stem: String,
}

/// What the gallery shows about the issue itself.
#[derive(Debug, Clone, Serialize)]
pub struct GalleryInfo {
    pub title: String,
    pub preheader: String,
    pub web_url: String,
    /// Warnings and errors from the checks, one per line.
    pub findings: Vec<String>,
}

const INDEX: &str = include_str!("preview_index.html");
const COMPARE: &str = include_str!("preview_compare.html");

fn write(path: &Path, bytes: &[u8]) -> Result<(), SendError> {
    std::fs::write(path, bytes).map_err(|e| {
        SendError::new(
            FailureKind::Fatal,
            None,
            format!("cannot write {}: {e}", path.display()),
        )
    })
}

impl PreviewTransport {
    pub fn new(dir: &Path) -> PreviewTransport {
        PreviewTransport {
            dir: dir.to_path_buf(),
            entries: Mutex::new(Vec::new()),
            findings: Mutex::new(Diagnostics::default()),
        }
    }

    /// The checks' findings on messages over Gmail's clipping size.
    pub fn take_findings(&self) -> Diagnostics {
        std::mem::take(&mut self.findings.lock().unwrap())
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// Writes `index.html` and the comparison pages; returns the index path.
    pub fn finish(&self, info: &GalleryInfo) -> Result<PathBuf, SendError> {
        let mut entries = self.entries();
        entries.sort_by(|a, b| a.to.cmp(&b.to));
        let mut tera = tera::Tera::new();
        tera.add_raw_templates([("index.html", INDEX), ("compare.html", COMPARE)])
            .map_err(|e| SendError::new(FailureKind::Fatal, None, e.to_string()))?;
        for e in &entries {
            let mut ctx = tera::Context::new();
            ctx.insert("entry", e);
            ctx.insert("info", info);
            let page = tera
                .render("compare.html", &ctx)
                .map_err(|e| SendError::new(FailureKind::Fatal, None, e.to_string()))?;
            write(
                &self.dir.join(format!("{}.compare.html", e.stem)),
                page.as_bytes(),
            )?;
        }
        let mut ctx = tera::Context::new();
        ctx.insert("entries", &entries);
        ctx.insert("info", info);
        let page = tera
            .render("index.html", &ctx)
            .map_err(|e| SendError::new(FailureKind::Fatal, None, e.to_string()))?;
        let index = self.dir.join("index.html");
        write(&index, page.as_bytes())?;
        Ok(index)
    }
}

impl Transport for PreviewTransport {
    fn describe(&self) -> String {
        format!("preview files in {}", self.dir.display())
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let stem = unique_stem(&message.to);
        write(&self.dir.join(format!("{stem}.eml")), &message.bytes)?;
        // Read the parts back from the bytes: the preview shows what the
        // message carries, not what we meant to put in it.
        let parsed = mail_parser::MessageParser::default()
            .parse(&message.bytes)
            .ok_or_else(|| {
                SendError::new(
                    FailureKind::Permanent,
                    None,
                    "the built message does not parse as MIME",
                )
            })?;
        let html = parsed.body_html(0).unwrap_or_default();
        let text = parsed.body_text(0).unwrap_or_default();
        if html.len() > GMAIL_CLIP_BYTES {
            check_html(
                &html,
                &format!("HTML for {}", message.to),
                &Default::default(),
                &mut self.findings.lock().unwrap(),
            );
        }
        write(&self.dir.join(format!("{stem}.html")), html.as_bytes())?;
        // MIME text is CRLF; the preview file is for reading in an editor.
        let text = text.replace("\r\n", "\n");
        write(&self.dir.join(format!("{stem}.txt")), text.as_bytes())?;
        let to_header = parsed
            .to()
            .and_then(|a| a.first())
            .map(|a| match (&a.name, &a.address) {
                (Some(n), Some(addr)) => format!("{n} <{addr}>"),
                (None, Some(addr)) => addr.to_string(),
                _ => message.to.clone(),
            })
            .unwrap_or_else(|| message.to.clone());
        self.entries.lock().unwrap().push(Entry {
            to: message.to.clone(),
            to_header,
            subject: parsed.subject().unwrap_or_default().to_string(),
            html_bytes: html.len(),
            html_kb: format!("{:.1}", html.len() as f64 / 1024.0),
            stem,
        });
        Ok(())
    }
}
