//! Subscribers as CSV: a streaming, validating reader (for `import`, and for
//! `preview`/`check --subscribers`) and the writer for `list`/`export`.
//!
//! Reading: a header row is required; names are trimmed and matched
//! case-insensitively, a UTF-8 BOM is ignored. `email` is required;
//! `first_name`/`last_name` (or a single `name`, split at the first space)
//! are optional; `lists` (`;`-separated list names, added to the person's
//! lists) and `status` (`active`, `unsubscribed`, `bounced`) are optional;
//! every other column is an attribute (lower-cased name; an empty cell
//! means "no value").
//!
//! Writing produces exactly those columns, so an export imports back
//! unchanged: `email,first_name,last_name,<attributes sorted>,lists,status`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::{self, SkippedRow, Status, Subscriber};
use super::{Recipient, normalise_email};

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:1: {message}")]
    Header { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// The header row, understood.
#[derive(Debug, Clone)]
pub struct Header {
    /// Number of fields every row must have.
    pub width: usize,
    email: usize,
    first_name: Option<usize>,
    last_name: Option<usize>,
    name: Option<usize>,
    lists: Option<usize>,
    status: Option<usize>,
    /// Attribute columns: (index, lower-cased name), sorted by name.
    attributes: Vec<(usize, String)>,
}

impl Header {
    /// Understands a header row; the error says what to fix.
    pub fn parse<'a>(fields: impl IntoIterator<Item = &'a str>) -> Result<Header, String> {
        let names: Vec<String> = fields
            .into_iter()
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
        let mut seen = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() {
                return Err(format!(
                    "column {} has no name: every column needs a header",
                    i + 1
                ));
            }
            if n.chars().any(char::is_control) {
                return Err(format!(
                    "column {} name {n:?} contains a line break or control character",
                    i + 1
                ));
            }
            if let Some(first) = seen.insert(n.as_str(), i) {
                return Err(format!(
                    "columns {} and {} are both named `{n}`: rename or remove one",
                    first + 1,
                    i + 1
                ));
            }
        }
        let find = |name: &str| names.iter().position(|n| n == name);
        let Some(email) = find("email") else {
            return Err(format!(
                "no `email` column (found: {}): the first row must name the columns, one of them `email`",
                names.join(", ")
            ));
        };
        let (first_name, last_name, name) = (find("first_name"), find("last_name"), find("name"));
        if name.is_some() && (first_name.is_some() || last_name.is_some()) {
            return Err(
                "both `name` and `first_name`/`last_name` columns: keep one or the other".into(),
            );
        }
        let mut attributes: Vec<(usize, String)> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| !model::RESERVED_COLUMNS.contains(&n.as_str()))
            .map(|(i, n)| (i, n.clone()))
            .collect();
        attributes.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(Header {
            width: names.len(),
            email,
            first_name,
            last_name,
            name,
            lists: find("lists"),
            status: find("status"),
            attributes,
        })
    }

    /// Attribute names, sorted.
    pub fn attribute_names(&self) -> impl Iterator<Item = &str> {
        self.attributes.iter().map(|(_, n)| n.as_str())
    }

    pub fn attribute_count(&self) -> usize {
        self.attributes.len()
    }

    /// Whether the file says anything about names (else stored names are kept).
    pub fn has_names(&self) -> bool {
        self.first_name.is_some() || self.last_name.is_some() || self.name.is_some()
    }
}

/// A valid row. `None` means the file has no such column (keep what is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    pub line: u64,
    /// Trimmed, as given.
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// The non-empty attribute cells as a JSON object, keys sorted, no
    /// spaces: the stored form, built here so a row costs one allocation
    /// for all its attributes (see [`CsvRow::attribute_map`]).
    pub attributes: String,
    pub lists: Vec<String>,
    pub status: Option<Status>,
}

impl CsvRow {
    pub fn key(&self) -> String {
        normalise_email(&self.email)
    }

    /// The non-empty attribute cells.
    pub fn attribute_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.attributes).unwrap_or_default()
    }
}

/// One data row: valid, or skipped with its reason.
#[derive(Debug)]
pub enum Parsed {
    Row(CsvRow),
    Skipped(SkippedRow),
}

/// Reads and validates rows one at a time; memory stays at one row however
/// long the file is. Row-level problems come back as [`Parsed::Skipped`];
/// only I/O errors end the reading. Duplicates are not detected here (the
/// caller decides how to remember what it has seen).
pub struct RowReader<R: Read> {
    reader: csv::Reader<LineTracker<R>>,
    header: Arc<Header>,
    record: csv::StringRecord,
    path: PathBuf,
}

impl<R: Read> RowReader<R> {
    /// Reads the header; `path` names the input in errors.
    pub fn new(input: R, path: &Path) -> Result<RowReader<R>, CsvError> {
        let mut reader = csv::ReaderBuilder::new()
            // Rows of the wrong width are reported by us, with the line.
            .flexible(true)
            .from_reader(LineTracker::new(input));
        let header_err = |message: String| CsvError::Header {
            path: path.to_path_buf(),
            message,
        };
        let header = match reader.headers() {
            Ok(h) if h.is_empty() || (h.len() == 1 && h[0].trim().is_empty()) => {
                return Err(header_err(
                    "the file is empty: the first row must name the columns, one of them `email`"
                        .into(),
                ));
            }
            Ok(h) => Header::parse(h.iter()).map_err(header_err)?,
            Err(e) => return Err(read_error(path, e)),
        };
        Ok(RowReader {
            reader,
            header: Arc::new(header),
            record: csv::StringRecord::new(),
            path: path.to_path_buf(),
        })
    }

    pub fn header(&self) -> &Arc<Header> {
        &self.header
    }

    /// The next data row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<Parsed>, CsvError> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = self.line_at(self.record.position());
                Ok(Some(match validate(&self.header, &self.record, line) {
                    Ok(row) => Parsed::Row(row),
                    Err(reason) => Parsed::Skipped(SkippedRow { line, reason }),
                }))
            }
            Err(e) => match e.kind() {
                csv::ErrorKind::Utf8 { pos, .. } => Ok(Some(Parsed::Skipped(SkippedRow {
                    line: self.line_at(pos.as_ref()),
                    reason: "not valid UTF-8: save the file as UTF-8".into(),
                }))),
                _ => Err(read_error(&self.path, e)),
            },
        }
    }
}

impl<R: Read> RowReader<R> {
    fn line_at(&self, position: Option<&csv::Position>) -> u64 {
        position.map_or(0, |p| self.reader.get_ref().line_at(p.byte()))
    }
}

/// Counts line breaks as the CSV reader consumes the input, to give each
/// row the line it starts on. The csv crate's own line numbers are off by
/// one after a CRLF line end (what spreadsheet programs on Windows write)
/// and do not advance at all for CR line ends; its byte offsets are right,
/// but point at the previous row's leftover terminator or at blank lines.
/// Memory: only breaks between the last row asked about and what the CSV
/// reader has read ahead are kept.
struct LineTracker<R> {
    inner: R,
    lines: RefCell<Lines>,
}

#[derive(Default)]
struct Lines {
    /// Bytes read so far.
    read: u64,
    /// Line breaks not yet counted: (offset, length: 2 for CRLF).
    breaks: VecDeque<(u64, u64)>,
    /// A CR at the end of what was read: CRLF or a lone CR, unknown yet.
    pending_cr: Option<u64>,
    /// Breaks counted so far, and where the last one counted ended.
    counted: u64,
    counted_to: u64,
}

impl<R: Read> LineTracker<R> {
    fn new(inner: R) -> Self {
        LineTracker {
            inner,
            lines: RefCell::new(Lines::default()),
        }
    }

    /// The 1-based line of the row the CSV reader reports at `offset`:
    /// breaks before it, plus the blank lines and terminator bytes it
    /// starts with. Offsets must not decrease between calls.
    fn line_at(&self, offset: u64) -> u64 {
        let mut l = self.lines.borrow_mut();
        while let Some(&(at, len)) = l.breaks.front() {
            if at >= offset {
                break;
            }
            l.breaks.pop_front();
            l.counted += 1;
            l.counted_to = at + len;
        }
        let mut start = offset.max(l.counted_to);
        loop {
            match l.breaks.front() {
                Some(&(at, len)) if at == start => {
                    l.breaks.pop_front();
                    l.counted += 1;
                    start = at + len;
                    l.counted_to = start;
                }
                _ if l.pending_cr == Some(start) => {
                    // Either way one break; its LF (if any) is skipped
                    // when it arrives, as it lies before `counted_to`.
                    l.pending_cr = None;
                    l.counted += 1;
                    start += 1;
                    l.counted_to = start + 1;
                }
                _ => break,
            }
        }
        l.counted + 1
    }
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let l = self.lines.get_mut();
        let base = l.read;
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = base + i as u64;
            match b {
                b'\n' => match l.pending_cr.take() {
                    Some(cr) if cr + 1 == at => l.breaks.push_back((cr, 2)),
                    Some(cr) => {
                        l.breaks.push_back((cr, 1));
                        l.breaks.push_back((at, 1));
                    }
                    None if at + 1 == l.counted_to => {} // the LF of a CR already counted
                    None => l.breaks.push_back((at, 1)),
                },
                b'\r' => {
                    if let Some(cr) = l.pending_cr.replace(at) {
                        l.breaks.push_back((cr, 1));
                    }
                }
                _ => {
                    if let Some(cr) = l.pending_cr.take() {
                        l.breaks.push_back((cr, 1));
                    }
                }
            }
        }
        if n == 0
            && let Some(cr) = l.pending_cr.take()
        {
            l.breaks.push_back((cr, 1));
        }
        l.read += n as u64;
        Ok(n)
    }
}

fn read_error(path: &Path, e: csv::Error) -> CsvError {
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => CsvError::Read {
            path: path.to_path_buf(),
            source,
        },
        _ => CsvError::Header {
            path: path.to_path_buf(),
            message,
        },
    }
}

/// The row-level rules, in a fixed order so the reason for a row with
/// several faults is always the same one.
fn validate(header: &Header, record: &csv::StringRecord, line: u64) -> Result<CsvRow, String> {
    if record.len() != header.width {
        return Err(format!(
            "{} field{}, the header has {}",
            record.len(),
            if record.len() == 1 { "" } else { "s" },
            header.width
        ));
    }
    let email = record[header.email].trim();
    model::check_email(email)?;
    let name_field = |col: Option<usize>, field: &str| -> Result<Option<String>, String> {
        match col {
            None => Ok(None),
            Some(i) => {
                let v = record[i].trim();
                model::check_text(field, v, true)?;
                Ok(Some(v.to_string()))
            }
        }
    };
    let (mut first_name, mut last_name) = (
        name_field(header.first_name, "first_name")?,
        name_field(header.last_name, "last_name")?,
    );
    if let Some(name) = name_field(header.name, "name")? {
        let (f, l) = name.split_once(' ').unwrap_or((&name, ""));
        first_name = Some(f.to_string());
        last_name = Some(l.trim().to_string());
    }
    let mut attributes = Vec::with_capacity(64);
    attributes.push(b'{');
    for (i, name) in &header.attributes {
        let v = record[*i].trim();
        model::check_text(name, v, false)?;
        if !v.is_empty() {
            if attributes.len() > 1 {
                attributes.push(b',');
            }
            let _ = serde_json::to_writer(&mut attributes, name);
            attributes.push(b':');
            let _ = serde_json::to_writer(&mut attributes, v);
        }
    }
    attributes.push(b'}');
    let attributes = String::from_utf8(attributes).unwrap_or_else(|_| "{}".into());
    let lists = match header.lists {
        Some(i) => model::split_lists(&record[i])?,
        None => Vec::new(),
    };
    let status = match header.status.map(|i| record[i].trim()) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<Status>()?),
    };
    Ok(CsvRow {
        line,
        email: email.to_string(),
        first_name,
        last_name,
        attributes,
        lists,
        status,
    })
}

/// Subscribers read whole from a small file, for previews and checks.
#[derive(Debug, Default)]
pub struct CsvRecipients {
    pub recipients: Vec<Recipient>,
    pub skipped: Vec<SkippedRow>,
    /// Attribute column names, lower-cased, sorted.
    pub attributes: Vec<String>,
}

/// Reads every valid row of `path` into memory, with the same rules and
/// reasons as an import (for previews and checks; imports stream instead).
/// Unsubscribed and bounced rows are left out: they would not be sent to.
pub fn read_recipients(path: &Path) -> Result<CsvRecipients, CsvError> {
    let file = std::fs::File::open(path).map_err(|source| CsvError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = RowReader::new(std::io::BufReader::new(file), path)?;
    let header = Arc::clone(reader.header());
    let mut out = CsvRecipients {
        attributes: header.attribute_names().map(str::to_string).collect(),
        ..CsvRecipients::default()
    };
    let mut seen: HashMap<String, u64> = HashMap::new();
    while let Some(parsed) = reader.next_row()? {
        let row = match parsed {
            Parsed::Row(row) => row,
            Parsed::Skipped(s) => {
                out.skipped.push(s);
                continue;
            }
        };
        let key = row.key();
        if let Some(first) = seen.get(&key) {
            out.skipped.push(SkippedRow {
                line: row.line,
                reason: duplicate_reason(*first, &key),
            });
            continue;
        }
        seen.insert(key, row.line);
        if matches!(row.status, Some(Status::Unsubscribed | Status::Bounced)) {
            continue;
        }
        out.recipients.push(Recipient {
            attributes: row.attribute_map(),
            email: row.email,
            first_name: row.first_name.unwrap_or_default(),
            last_name: row.last_name.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The reason text for a second row with the same address.
pub fn duplicate_reason(first_line: u64, key: &str) -> String {
    format!("duplicate of line {first_line} ({key})")
}

/// Writes subscribers in the import format.
pub struct CsvWriter<W: Write> {
    writer: csv::Writer<W>,
    attributes: Vec<String>,
    record: Vec<String>,
}

impl<W: Write> CsvWriter<W> {
    /// Writes the header: the attribute columns are fixed here (sorted).
    pub fn new(out: W, attributes: &[String]) -> Result<CsvWriter<W>, csv::Error> {
        let mut attributes = attributes.to_vec();
        attributes.sort();
        attributes.dedup();
        let mut writer = csv::Writer::from_writer(out);
        let mut header = vec!["email", "first_name", "last_name"];
        header.extend(attributes.iter().map(String::as_str));
        header.extend(["lists", "status"]);
        writer.write_record(&header)?;
        Ok(CsvWriter {
            writer,
            record: Vec::with_capacity(header.len()),
            attributes,
        })
    }

    pub fn write(&mut self, s: &Subscriber) -> Result<(), csv::Error> {
        self.record.clear();
        self.record
            .extend([s.email.clone(), s.first_name.clone(), s.last_name.clone()]);
        for a in &self.attributes {
            self.record
                .push(s.attributes.get(a).cloned().unwrap_or_default());
        }
        self.record
            .push(s.lists.join(&model::LIST_SEPARATOR.to_string()));
        self.record.push(s.status.as_str().to_string());
        self.writer.write_record(&self.record)
    }

    pub fn finish(mut self) -> Result<W, csv::Error> {
        self.writer.flush()?;
        self.writer
            .into_inner()
            .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &str) -> Result<Vec<Parsed>, CsvError> {
        let mut r = RowReader::new(text.as_bytes(), Path::new("t.csv"))?;
        let mut out = Vec::new();
        while let Some(p) = r.next_row()? {
            out.push(p);
        }
        Ok(out)
    }

    fn skipped(text: &str) -> Vec<String> {
        parse_all(text)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Parsed::Skipped(s) => Some(s.to_string()),
                Parsed::Row(_) => None,
            })
            .collect()
    }

    #[test]
    fn header_rules() {
        let h = Header::parse(["\u{feff} Email ", "City", "FIRST_NAME", "age"]).unwrap();
        assert_eq!(h.attribute_names().collect::<Vec<_>>(), ["age", "city"]);
        assert!(
            Header::parse(["mail", "name"])
                .unwrap_err()
                .starts_with("no `email` column (found: mail, name)")
        );
        assert_eq!(
            Header::parse(["email", "City", "city"]).unwrap_err(),
            "columns 2 and 3 are both named `city`: rename or remove one"
        );
        assert_eq!(
            Header::parse(["email", ""]).unwrap_err(),
            "column 2 has no name: every column needs a header"
        );
        let err = RowReader::new("".as_bytes(), Path::new("e.csv"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("e.csv:1: the file is empty"), "{err}");
    }

    #[test]
    fn row_reasons_with_lines() {
        let text = "email,first_name,city\n\
                    ana@example.org,Ana,Portland\n\
                    bad@,B,x\n\
                    ,C,x\n\
                    c@example.org,C\n\
                    \"d@example.org\",\"D\nE\",x\n\
                    e@example.org,E,\"multi\nline city\"\n";
        assert_eq!(
            skipped(text),
            [
                "line 3: invalid email address \"bad@\": nothing after the @",
                "line 4: empty email address",
                "line 5: 2 fields, the header has 3",
                "line 6: first_name contains a line break",
            ]
        );
    }

    #[test]
    fn lines_are_right_for_crlf_cr_bom_blank_lines_and_quoted_breaks() {
        let lines = |text: &str| -> Vec<u64> {
            parse_all(text)
                .unwrap()
                .into_iter()
                .map(|p| match p {
                    Parsed::Row(r) => r.line,
                    Parsed::Skipped(s) => s.line,
                })
                .collect()
        };
        assert_eq!(lines("email\na@x.org\nb@x.org\n"), [2, 3]);
        assert_eq!(lines("email\r\na@x.org\r\nb@x.org\r\n"), [2, 3]);
        assert_eq!(lines("email\ra@x.org\rb@x.org"), [2, 3]);
        assert_eq!(
            lines("\u{feff}email,n\r\n\r\na@x.org,\"1\r\n2\"\r\n\nb@x.org,3\r\nbad,4"),
            [3, 6, 7]
        );
        // Far beyond any read-ahead buffer, still right.
        let mut text = String::from("email\r\n");
        for i in 0..20_000 {
            text.push_str(&format!("u{i}@x.org\r\n"));
            if i % 1000 == 0 {
                text.push_str("\r\n");
            }
        }
        let got = lines(&text);
        assert_eq!(got[0], 2);
        assert_eq!(got[1], 4, "a blank line after the first row");
        assert_eq!(*got.last().unwrap(), 20_000 + 1 + 20);
    }

    #[test]
    fn name_column_splits() {
        let rows =
            parse_all("email,name\na@example.org,Ana Maria Lima\nb@example.org,Björn\n").unwrap();
        let Parsed::Row(r) = &rows[0] else { panic!() };
        assert_eq!(r.first_name.as_deref(), Some("Ana"));
        assert_eq!(r.last_name.as_deref(), Some("Maria Lima"));
        let Parsed::Row(r) = &rows[1] else { panic!() };
        assert_eq!(
            (r.first_name.as_deref(), r.last_name.as_deref()),
            (Some("Björn"), Some(""))
        );
    }

    #[test]
    fn sample_csv_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("subscribers/sample.csv");
        let r = read_recipients(&path).unwrap();
        assert_eq!(r.recipients.len(), 10);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert_eq!(r.recipients[7].first_name, "宏");
        assert_eq!(r.attributes, ["city"]);
    }
}
