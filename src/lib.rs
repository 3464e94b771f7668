//! tidings: a newsletter publishing pipeline.
//!
//! Data flows one way through one module per stage:
//! `config` -> `content` (Markdown issue) -> `render` (tera -> MJML -> HTML,
//! once per issue) -> `deliver` (per-recipient message -> transport), with
//! `subscribers` (the person, CSV) and `store` (the database: subscribers,
//! suppressions, campaigns, deliveries) supplying recipients and recording
//! outcomes, and `cli` driving it all. `serve` answers the unsubscribe links
//! and publishes sent issues. Leaf modules any stage may use: `address`,
//! `diagnostics`, `html`, `shutdown`; `error` gathers the stages' errors for
//! the CLI.
//!
//! A module imports only from stages before it (or leaves); nothing imports
//! `cli`, and only `store` speaks SQL.

pub mod address;
pub mod bounces;
pub mod cli;
pub mod config;
pub mod content;
pub mod deliver;
pub mod diagnostics;
pub mod error;
pub mod html;
pub mod render;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod subscribers;

pub use error::{Error, Result};
