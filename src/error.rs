//! The one error type the CLI sees, and the exit code for each case.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::content::ContentError;
use crate::deliver::DeliverError;
use crate::render::RenderError;
use crate::store::StoreError;
use crate::subscribers::csv::CsvError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// The subscriber database could not be opened, was locked, or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `tidings serve` could not start (the address is taken, …).
    #[error("{0}")]
    Serve(String),
    /// The mail server (or the preview folder) refused or could not be
    /// reached: the reply, or the local cause.
    #[error("{0}")]
    Transport(#[from] crate::deliver::SendError),
    /// The machine refused what a command needs (its async runtime, the
    /// terminal for an answer).
    #[error("{0}")]
    System(String),
    /// Wrong use of the command line that clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// The job ran and found problems (check errors, failed recipients):
    /// already reported, exit 1.
    #[error("{0}")]
    Problems(String),
}

impl Error {
    /// 1: the job ran and some of it failed; 2: it could not run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Problems(_) => 1,
            _ => 2,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
