//! tidings: a newsletter publishing pipeline.
//!
//! Data flows one way through one module per stage:
//! `config` -> `content` (Markdown issue) -> `render` (tera -> MJML -> HTML,
//! once per issue) -> `deliver` (per-recipient message -> transport), with
//! `subscribers` supplying recipients and `cli` driving it all. `serve`
//! answers the unsubscribe links and publishes sent issues.

pub mod address;
pub mod bounces;
pub mod cli;
pub mod config;
pub mod content;
pub mod db;
pub mod deliver;
pub mod diagnostics;
pub mod error;
pub mod render;
pub mod serve;
pub mod subscribers;

pub use error::{Error, Result};
