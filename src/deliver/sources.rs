//! Recipient queues without a journal: for dry runs and test sends, which
//! must not mark anyone as sent. Each hands out recipients in order and
//! counts what it skipped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::send::Queue;
use crate::store::journal::Job;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::store::{Store, StoreError};
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
    async fn claim(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        Ok(self.jobs.lock().unwrap().by_ref().take(n).collect())
    }
}

/// Active subscribers from the store, read by a task that walks the list
/// in pages (`Store::recipients`) into a bounded channel: memory stays flat
/// whatever the list's size.
pub struct StoreQueue {
    rx: tokio::sync::Mutex<mpsc::Receiver<Result<(i64, Recipient), StoreError>>>,
}

impl StoreQueue {
    pub fn new(store: Store, list: Option<String>) -> StoreQueue {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut rows = store.recipients(list.as_deref());
            while let Some(row) = rows.next().await {
                if tx.send(row).await.is_err() {
                    break;
                }
            }
        });
        StoreQueue {
            rx: tokio::sync::Mutex::new(rx),
        }
    }
}

impl Queue for StoreQueue {
    async fn claim(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        let mut rx = self.rx.lock().await;
        let mut jobs = Vec::with_capacity(n);
        while jobs.len() < n {
            let next = if jobs.is_empty() {
                rx.recv().await
            } else {
                match rx.try_recv() {
                    Ok(row) => Some(row),
                    Err(_) => break,
                }
            };
            let Some(row) = next else { break };
            let (id, r) = row?;
            jobs.push(job(id, r));
        }
        Ok(jobs)
    }
}

/// Recipients from a CSV file, minus those the store says must not be
/// mailed (unsubscribed, bounced, removed).
pub struct CsvQueue {
    rows: Mutex<std::iter::Enumerate<std::vec::IntoIter<Recipient>>>,
    store: Option<Store>,
    skipped: Mutex<BTreeMap<String, u64>>,
}

impl CsvQueue {
    pub fn new(rows: Vec<Recipient>, store: Option<Store>) -> CsvQueue {
        CsvQueue {
            rows: Mutex::new(rows.into_iter().enumerate()),
            store,
            skipped: Mutex::new(BTreeMap::new()),
        }
    }

    /// Skipped so far, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        self.skipped.lock().unwrap().clone()
    }
}

impl Queue for CsvQueue {
    async fn claim(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        loop {
            let batch: Vec<(usize, Recipient)> =
                self.rows.lock().unwrap().by_ref().take(n).collect();
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let recipients: Vec<Recipient> = batch.iter().map(|(_, r)| r.clone()).collect();
            let blocked = match &self.store {
                Some(store) => store.blocked(&recipients).await?,
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
