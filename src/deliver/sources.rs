//! Recipient queues without a journal: for dry runs and test sends, which
//! must not mark anyone as sent. Each hands out recipients in order and
//! counts what it skipped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::journal::Job;
use super::send::Queue;
use crate::db::{Db, DbError};
use crate::subscribers::Recipient;

fn job(seq: i64, recipient: Recipient) -> Job {
    Job {
        key: recipient.key(),
        seq,
        recipient,
        attempts: 0,
    }
}

/// Fixed recipients, in memory (test sends, small lists).
pub struct ListQueue {
    jobs: Mutex<std::vec::IntoIter<Job>>,
}

impl ListQueue {
    pub fn new(recipients: Vec<Recipient>) -> ListQueue {
        let jobs: Vec<Job> = recipients
            .into_iter()
            .enumerate()
            .map(|(i, r)| job(i as i64 + 1, r))
            .collect();
        ListQueue {
            jobs: Mutex::new(jobs.into_iter()),
        }
    }
}

impl Queue for ListQueue {
    async fn claim(&self, n: usize) -> Result<Vec<Job>, DbError> {
        Ok(self.jobs.lock().unwrap().by_ref().take(n).collect())
    }
}

/// Active subscribers from the store, paged by id: memory stays flat
/// whatever the list's size.
pub struct StoreQueue {
    db: Db,
    list: Option<String>,
    after: Mutex<i64>,
}

impl StoreQueue {
    pub fn new(db: Db, list: Option<String>) -> StoreQueue {
        StoreQueue {
            db,
            list,
            after: Mutex::new(0),
        }
    }
}

impl Queue for StoreQueue {
    async fn claim(&self, n: usize) -> Result<Vec<Job>, DbError> {
        let after = *self.after.lock().unwrap();
        let rows = self.db.active_after(self.list.as_deref(), after, n).await?;
        if let Some((id, _)) = rows.last() {
            *self.after.lock().unwrap() = *id;
        }
        Ok(rows.into_iter().map(|(id, r)| job(id, r)).collect())
    }
}

/// Recipients from a CSV file, minus those the store says must not be
/// mailed (unsubscribed, bounced, removed).
pub struct CsvQueue {
    rows: Mutex<std::iter::Enumerate<std::vec::IntoIter<Recipient>>>,
    db: Option<Db>,
    skipped: Mutex<BTreeMap<String, u64>>,
}

impl CsvQueue {
    pub fn new(rows: Vec<Recipient>, db: Option<Db>) -> CsvQueue {
        CsvQueue {
            rows: Mutex::new(rows.into_iter().enumerate()),
            db,
            skipped: Mutex::new(BTreeMap::new()),
        }
    }

    /// Skipped so far, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        self.skipped.lock().unwrap().clone()
    }
}

impl Queue for CsvQueue {
    async fn claim(&self, n: usize) -> Result<Vec<Job>, DbError> {
        loop {
            let batch: Vec<(usize, Recipient)> =
                self.rows.lock().unwrap().by_ref().take(n).collect();
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let recipients: Vec<Recipient> = batch.iter().map(|(_, r)| r.clone()).collect();
            let blocked = match &self.db {
                Some(db) => db.blocked(&recipients).await?,
                None => Default::default(),
            };
            let mut jobs = Vec::with_capacity(batch.len());
            for (i, r) in batch {
                match blocked.get(&r.key()) {
                    Some(reason) => {
                        *self
                            .skipped
                            .lock()
                            .unwrap()
                            .entry(reason.clone())
                            .or_default() += 1
                    }
                    None => jobs.push(job(i as i64 + 1, r)),
                }
            }
            if !jobs.is_empty() {
                return Ok(jobs);
            }
        }
    }
}
