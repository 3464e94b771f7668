//! Subscriber store and `tidings subscribers …`: one test binary.
//!
//! `store` runs one suite against SQLite (always) and PostgreSQL (ignored
//! unless asked: `cargo test -- --include-ignored` with
//! `TIDINGS_TEST_POSTGRES_URL` set, as scripts/test.sh does). `cli` drives
//! the real binary over small fixture projects.

#[path = "subscribers/cli.rs"]
mod cli;
#[path = "subscribers/common.rs"]
mod common;
#[path = "subscribers/store.rs"]
mod store;
