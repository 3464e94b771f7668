//! Reading subscribers from CSV: a header row, `email` required,
//! `first_name`/`last_name` (or `name`) optional, every other column an
//! attribute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Recipient;

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:1: {message}")]
    Header { path: PathBuf, message: String },
}

/// A row that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct CsvRecipients {
    pub recipients: Vec<Recipient>,
    pub skipped: Vec<SkippedRow>,
    /// Attribute column names, lower-cased, in file order.
    pub attributes: Vec<String>,
}

/// Reads every valid row of `path` into memory (for previews and small
/// lists; imports stream instead).
pub fn read_recipients(path: &Path) -> Result<CsvRecipients, CsvError> {
    let file = std::fs::File::open(path).map_err(|source| CsvError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| CsvError::Header {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_lowercase()
        })
        .collect();
    let Some(email_col) = headers.iter().position(|h| h == "email") else {
        return Err(CsvError::Header {
            path: path.to_path_buf(),
            message: format!(
                "no `email` column (found: {}): the first row must name the columns, one of them `email`",
                headers.join(", ")
            ),
        });
    };
    let mut out = CsvRecipients {
        attributes: headers
            .iter()
            .filter(|h| !matches!(h.as_str(), "email" | "first_name" | "last_name" | "name"))
            .cloned()
            .collect(),
        ..CsvRecipients::default()
    };
    let mut seen = std::collections::HashSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                out.skipped.push(SkippedRow {
                    line: e.position().map_or(0, |p| p.line()),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != headers.len() {
            out.skipped.push(SkippedRow {
                line,
                reason: format!(
                    "{} fields where the header has {}",
                    record.len(),
                    headers.len()
                ),
            });
            continue;
        }
        let email = record.get(email_col).unwrap_or("").trim().to_string();
        if email.is_empty() || !email.contains('@') {
            out.skipped.push(SkippedRow {
                line,
                reason: format!("invalid email address `{email}`"),
            });
            continue;
        }
        if !seen.insert(super::normalise_email(&email)) {
            out.skipped.push(SkippedRow {
                line,
                reason: format!("duplicate of an earlier row: `{email}`"),
            });
            continue;
        }
        let mut r = Recipient::new(email);
        let mut attributes = BTreeMap::new();
        for (h, v) in headers.iter().zip(record.iter()) {
            match h.as_str() {
                "email" => {}
                "first_name" => r.first_name = v.trim().to_string(),
                "last_name" => r.last_name = v.trim().to_string(),
                "name" => {
                    let v = v.trim();
                    match v.split_once(' ') {
                        Some((f, l)) => {
                            r.first_name = f.to_string();
                            r.last_name = l.trim().to_string();
                        }
                        None => r.first_name = v.to_string(),
                    }
                }
                _ if !v.trim().is_empty() => {
                    attributes.insert(h.clone(), v.trim().to_string());
                }
                _ => {}
            }
        }
        r.attributes = attributes;
        out.recipients.push(r);
    }
    Ok(out)
}
