//! The dry-run transport: each message is written as `<recipient>.eml`,
//! byte for byte what SMTP would have received.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{FailureKind, Outgoing, SendError, Transport, file_stem};

pub struct FileTransport {
    dir: PathBuf,
}

impl FileTransport {
    /// Writes into `dir`, which must exist.
    pub fn new(dir: &Path) -> FileTransport {
        FileTransport {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path_for(&self, email: &str) -> PathBuf {
        self.dir.join(format!("{}.eml", unique_stem(email)))
    }
}

/// The file stem for an address: the address itself when it is made of
/// file-safe characters, else the cleaned address plus a short hash, so two
/// addresses never share a file.
pub fn unique_stem(email: &str) -> String {
    let stem = file_stem(email);
    if stem == email {
        return stem;
    }
    let hash = Sha256::digest(email.as_bytes());
    format!(
        "{stem}~{:02x}{:02x}{:02x}{:02x}",
        hash[0], hash[1], hash[2], hash[3]
    )
}

impl Transport for FileTransport {
    fn describe(&self) -> String {
        format!(".eml files in {}", self.dir.display())
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let path = self.path_for(&message.to);
        // A direct write: a 40 KB file lands in the page cache in tens of
        // microseconds, less than handing it to tokio's blocking pool
        // (tokio::fs) costs, and dry runs have no latency-bound work to stall.
        std::fs::write(&path, &message.bytes).map_err(|e| {
            // A full disk or a missing folder will not heal by retrying
            // each recipient: stop the run.
            SendError::new(
                FailureKind::Fatal,
                None,
                format!("cannot write {}: {e}", path.display()),
            )
        })
    }
}
