//! Reports from paths: a single `.eml` file, a Maildir (`cur/` and
//! `new/`), a folder of message files, or an mbox.
//!
//! Streaming: one message in memory at a time, so memory stays flat
//! however large the mailbox (a Maildir's names are read as the folder is
//! walked, an mbox line by line).

use std::fs::{self, File, ReadDir};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One message and where it came from (`path`, or `path:line` in an mbox).
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub origin: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SourceError {
    pub path: PathBuf,
    pub message: String,
}

impl SourceError {
    fn io(path: &Path, what: &str, e: std::io::Error) -> SourceError {
        SourceError {
            path: path.to_path_buf(),
            message: format!("{what}: {e}"),
        }
    }
}

/// The messages at `path`, one at a time. A directory with `cur/` or
/// `new/` is a Maildir; another directory is read as one message per
/// file; a file starting with `From ` is an mbox, any other file one
/// message.
pub fn messages(
    path: &Path,
) -> Result<Box<dyn Iterator<Item = Result<RawMessage, SourceError>>>, SourceError> {
    let meta = fs::metadata(path).map_err(|e| SourceError::io(path, "cannot read", e))?;
    if meta.is_dir() {
        let maildir = ["new", "cur"]
            .iter()
            .map(|d| path.join(d))
            .filter(|d| d.is_dir())
            .collect::<Vec<_>>();
        let dirs = if maildir.is_empty() {
            vec![path.to_path_buf()]
        } else {
            maildir
        };
        return Ok(Box::new(DirMessages {
            dirs: dirs.into_iter(),
            current: None,
        }));
    }
    let mut file = File::open(path).map_err(|e| SourceError::io(path, "cannot open", e))?;
    let mut head = [0u8; 5];
    let n =
        read_up_to(&mut file, &mut head).map_err(|e| SourceError::io(path, "cannot read", e))?;
    let file = File::open(path).map_err(|e| SourceError::io(path, "cannot open", e))?;
    if &head[..n] == b"From " {
        return Ok(Box::new(Mbox::new(path, file)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    BufReader::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| SourceError::io(path, "cannot read", e))?;
    Ok(Box::new(std::iter::once(Ok(RawMessage {
        origin: path.display().to_string(),
        bytes,
    }))))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

struct DirMessages {
    dirs: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, ReadDir)>,
}

impl Iterator for DirMessages {
    type Item = Result<RawMessage, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let dir = self.dirs.next()?;
                match fs::read_dir(&dir) {
                    Ok(rd) => self.current = Some((dir, rd)),
                    Err(e) => return Some(Err(SourceError::io(&dir, "cannot list", e))),
                }
            }
            let (dir, rd) = self.current.as_mut()?;
            match rd.next() {
                None => self.current = None,
                Some(Err(e)) => return Some(Err(SourceError::io(dir, "cannot list", e))),
                Some(Ok(entry)) => {
                    let path = entry.path();
                    let name = entry.file_name();
                    // Maildir's own dot files, and folders (tmp/, subfolders).
                    if name.to_string_lossy().starts_with('.')
                        || entry.file_type().is_ok_and(|t| t.is_dir())
                    {
                        continue;
                    }
                    return Some(match fs::read(&path) {
                        Ok(bytes) => Ok(RawMessage {
                            origin: path.display().to_string(),
                            bytes,
                        }),
                        Err(e) => Err(SourceError::io(&path, "cannot read", e)),
                    });
                }
            }
        }
    }
}

/// An mbox: a message starts at each `From ` line at the start of the file
/// or after an empty line; `>From ` (any number of `>`) loses one `>`
/// (mboxrd, which also undoes mboxo's escaping of plain `From `).
struct Mbox {
    path: PathBuf,
    reader: BufReader<File>,
    line_no: usize,
    /// The `From ` line that starts the next message, already read.
    pending: Option<usize>,
    done: bool,
    line: Vec<u8>,
}

impl Mbox {
    fn new(path: &Path, file: File) -> Mbox {
        Mbox {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(64 * 1024, file),
            line_no: 0,
            pending: None,
            done: false,
            line: Vec::with_capacity(256),
        }
    }
}

impl Iterator for Mbox {
    type Item = Result<RawMessage, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut start = self.pending.take();
        let mut bytes = Vec::new();
        let mut previous_blank = true;
        loop {
            self.line.clear();
            let n = match self.reader.read_until(b'\n', &mut self.line) {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(SourceError::io(
                        &self.path,
                        &format!("cannot read after line {}", self.line_no),
                        e,
                    )));
                }
            };
            if n == 0 {
                self.done = true;
                break;
            }
            self.line_no += 1;
            if self.line.starts_with(b"From ") && previous_blank {
                if start.is_some() {
                    self.pending = Some(self.line_no);
                    break;
                }
                start = Some(self.line_no);
                continue;
            }
            if start.is_none() {
                // Text before the first `From ` line: not an mbox after all.
                self.done = true;
                return Some(Err(SourceError {
                    path: self.path.clone(),
                    message: format!(
                        "line {}: text before the first `From ` line: not an mbox",
                        self.line_no
                    ),
                }));
            }
            let content = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            previous_blank = content.is_empty();
            let gt = self.line.iter().take_while(|&&b| b == b'>').count();
            if gt > 0 && self.line[gt..].starts_with(b"From ") {
                bytes.extend_from_slice(&self.line[1..]);
            } else {
                bytes.extend_from_slice(&self.line);
            }
        }
        let start = start?;
        // The blank line that separates messages belongs to the mbox.
        if bytes.ends_with(b"\r\n\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n\n") {
            bytes.truncate(bytes.len() - 1);
        }
        Some(Ok(RawMessage {
            origin: format!("{}:{start}", self.path.display()),
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(path: &Path) -> Vec<RawMessage> {
        messages(path).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn mbox_split_and_unescape() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("box");
        fs::write(
            &p,
            "From MAILER-DAEMON Mon Dec  1 10:00:00 2026\nSubject: one\n\nbody\n>From here\n>>From there\nFrom inside a paragraph stays\n\nFrom MAILER-DAEMON Mon Dec  1 10:00:01 2026\nSubject: two\n\nsecond\n",
        )
        .unwrap();
        let m = all(&p);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].origin, format!("{}:1", p.display()));
        assert_eq!(
            String::from_utf8_lossy(&m[0].bytes),
            "Subject: one\n\nbody\nFrom here\n>From there\nFrom inside a paragraph stays\n"
        );
        assert_eq!(m[1].origin, format!("{}:9", p.display()));
        assert_eq!(
            String::from_utf8_lossy(&m[1].bytes),
            "Subject: two\n\nsecond\n"
        );
    }

    #[test]
    fn maildir_and_single_file() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["new", "cur", "tmp"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("new/1.host"), "Subject: a\n\nx\n").unwrap();
        fs::write(dir.path().join("cur/2.host:2,S"), "Subject: b\n\nx\n").unwrap();
        fs::write(dir.path().join("tmp/3.host"), "Subject: half-written\n").unwrap();
        assert_eq!(all(dir.path()).len(), 2);
        let one = dir.path().join("new/1.host");
        assert_eq!(all(&one).len(), 1);
        let missing = dir.path().join("nope.eml");
        let err = messages(&missing).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{err}"
        );
    }
}
