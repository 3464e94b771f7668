//! CSV import: streaming, in batches, in one transaction.
//!
//! A reader thread parses and validates rows (one row in memory at a time)
//! and hands batches over a channel of two, so parsing and writing overlap
//! on two cores while memory stays bounded. Each batch then:
//!
//! 1. drops rows whose address was already seen in this file. "Seen" is a
//!    per-connection scratch table (`email_key PRIMARY KEY, line`) in the
//!    database, not a set in memory: a file of any size costs the same RAM,
//!    and the first line is there to name in the reason. The scratch table
//!    is used for nothing else and dropped before commit;
//! 2. drops suppressed addresses (removed people);
//! 3. reads the stored rows for the batch's addresses, decides per row
//!    (new, updated, unchanged, kept unsubscribed, kept bounced), and
//!    writes new and changed rows in one multi-row upsert, list memberships
//!    and events in multi-row inserts.
//!
//! The upsert itself never turns an unsubscribed or bounced row active,
//! even if another writer changed the row between steps 3 and 4 (possible
//! on PostgreSQL).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::{Driver, StoreError, Tx, Val, attributes_json, parse_attributes, parse_status};
use crate::subscribers::csv::{CsvError, CsvRow, Header, Parsed, RowReader, duplicate_reason};
use crate::subscribers::model::{self, ImportOptions, ImportReport, SkippedRow, Status};
use crate::subscribers::{email_hash_hex, normalise_email};

/// Valid rows per batch: large enough that per-statement costs vanish,
/// small enough for every database's bind-parameter limit (see `MAX_PARAMS`).
const BATCH: usize = 2000;
/// Batches in flight between the reader thread and the writer.
const QUEUE: usize = 2;
/// Bind parameters per statement: under SQLite's 32766 and PostgreSQL's 65535.
const MAX_PARAMS: usize = 30_000;

struct Batch {
    rows: Vec<CsvRow>,
    skipped: Vec<SkippedRow>,
}

/// A row ready to decide on.
struct Incoming {
    row: CsvRow,
    key: String,
    hash: String,
}

/// A stored row, as far as an import compares it.
struct Existing {
    id: i64,
    email: String,
    first_name: String,
    last_name: String,
    attributes: BTreeMap<String, String>,
    status: Status,
    lists: Vec<String>,
}

pub(super) async fn import(
    driver: &dyn Driver,
    input: Box<dyn Read + Send>,
    path: &Path,
    options: ImportOptions,
    on_skip: &mut (dyn FnMut(&SkippedRow) + Send),
) -> Result<ImportReport, StoreError> {
    for l in &options.lists {
        model::check_list_name(l).map_err(|e| StoreError::Invalid(format!("--list: {e}")))?;
    }
    // The header first: a file we cannot read is reported before the
    // database is locked.
    let mut reader = RowReader::new(std::io::BufReader::with_capacity(256 * 1024, input), path)?;
    let header = Arc::clone(reader.header());

    let mut tx = Tx::begin(driver, true).await?;
    let scratch = driver.scratch_table();
    tx.exec(&format!("DROP TABLE IF EXISTS {scratch}"), vec![])
        .await?;
    tx.exec(
        &format!("CREATE TABLE {scratch} (email_key TEXT PRIMARY KEY, line BIGINT NOT NULL)"),
        vec![],
    )
    .await?;
    // With every other writer shut out, facts checked now hold for the
    // whole import, and whole lookups can be skipped.
    let exclusive = driver.exclusive_writes();
    let store_empty = exclusive
        && tx
            .count(
                "SELECT COUNT(*) FROM (SELECT 1 FROM subscribers LIMIT 1) x",
                vec![],
            )
            .await?
            == 0;
    let no_suppressions = exclusive
        && tx
            .count(
                "SELECT COUNT(*) FROM (SELECT 1 FROM suppressions LIMIT 1) x",
                vec![],
            )
            .await?
            == 0;

    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Batch>(QUEUE);
    let producer = tokio::task::spawn_blocking(move || -> Result<(), CsvError> {
        let mut batch = Batch {
            rows: Vec::with_capacity(BATCH),
            skipped: Vec::new(),
        };
        while let Some(parsed) = reader.next_row()? {
            match parsed {
                Parsed::Row(row) => batch.rows.push(row),
                Parsed::Skipped(s) => batch.skipped.push(s),
            }
            if batch.rows.len() >= BATCH || batch.skipped.len() >= BATCH {
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        rows: Vec::with_capacity(BATCH),
                        skipped: Vec::new(),
                    },
                );
                if sender.blocking_send(full).is_err() {
                    // The writer stopped (it reports why).
                    return Ok(());
                }
            }
        }
        if !batch.rows.is_empty() || !batch.skipped.is_empty() {
            let _ = sender.blocking_send(batch);
        }
        Ok(())
    });

    let now = model::now();
    let mut report = ImportReport::default();
    let mut writer = BatchWriter {
        tx: &mut tx,
        header: &header,
        options: &options,
        now: &now,
        store_empty,
        no_suppressions,
        report: &mut report,
    };
    let mut failed = None;
    while let Some(batch) = receiver.recv().await {
        match writer.write(batch).await {
            Ok(mut skipped) => {
                skipped.sort_by_key(|s| s.line);
                for s in &skipped {
                    on_skip(s);
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(receiver);
    let read = producer
        .await
        .map_err(|e| StoreError::Invalid(format!("the CSV reader stopped: {e}")))?;
    if let Some(e) = failed {
        tx.rollback().await.ok();
        return Err(e);
    }
    if let Err(e) = read {
        tx.rollback().await.ok();
        return Err(e.into());
    }
    if options.dry_run || (options.strict && report.skipped > 0) {
        tx.rollback().await?;
        return Ok(report);
    }
    tx.exec(&format!("DROP TABLE {scratch}"), vec![]).await?;
    tx.commit().await?;
    report.written = true;
    Ok(report)
}

struct BatchWriter<'t, 'd> {
    tx: &'t mut Tx<'d>,
    header: &'t Header,
    options: &'t ImportOptions,
    now: &'t str,
    store_empty: bool,
    no_suppressions: bool,
    report: &'t mut ImportReport,
}

impl BatchWriter<'_, '_> {
    /// Applies one batch; returns its skipped rows (unsorted).
    async fn write(&mut self, batch: Batch) -> Result<Vec<SkippedRow>, StoreError> {
        let Batch { rows, mut skipped } = batch;
        self.report.rows += (rows.len() + skipped.len()) as u64;

        // Duplicates inside the batch, then against earlier batches.
        let mut first_line: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        let mut incoming = Vec::with_capacity(rows.len());
        for row in rows {
            let key = normalise_email(&row.email);
            if let Some(first) = first_line.get(&key) {
                skipped.push(SkippedRow {
                    line: row.line,
                    reason: duplicate_reason(*first, &key),
                });
                continue;
            }
            first_line.insert(key.clone(), row.line);
            let hash = email_hash_hex(&row.email);
            incoming.push(Incoming { row, key, hash });
        }
        let incoming = self.drop_seen(incoming, &mut skipped).await?;
        self.report.skipped += skipped.len() as u64;

        let incoming = self.drop_suppressed(incoming).await?;
        let mut existing = self.existing(&incoming).await?;

        // Decide per row.
        let mut upserts: Vec<Upsert> = Vec::new();
        for inc in incoming {
            let extra_lists = self.options.lists.iter().chain(&inc.row.lists);
            match existing.remove(&inc.key) {
                None => {
                    let status = inc.row.status.unwrap_or(Status::Active);
                    let mut lists: Vec<String> = Vec::new();
                    for l in extra_lists {
                        if !lists.contains(l) {
                            lists.push(l.clone());
                        }
                    }
                    self.report.new += 1;
                    let attributes = crate::subscribers::csv::row_attributes(self.header, &inc.row);
                    upserts.push(Upsert {
                        id: None,
                        event: match status {
                            Status::Active => "imported",
                            other => other.as_str(),
                        },
                        email: inc.row.email,
                        key: inc.key,
                        hash: inc.hash,
                        first_name: inc.row.first_name.unwrap_or_default(),
                        last_name: inc.row.last_name.unwrap_or_default(),
                        attributes: attributes_json(&attributes),
                        status,
                        lists,
                    });
                }
                Some(e) if e.status == Status::Unsubscribed => self.report.kept_unsubscribed += 1,
                Some(e) if e.status == Status::Bounced => self.report.kept_bounced += 1,
                Some(e) => {
                    let mut attributes = e.attributes.clone();
                    for (name, value) in self.header.attribute_names().zip(&inc.row.attributes) {
                        match value {
                            Some(v) => attributes.insert(name.to_string(), v.clone()),
                            None => attributes.remove(name),
                        };
                    }
                    let first_name = inc.row.first_name.unwrap_or_else(|| e.first_name.clone());
                    let last_name = inc.row.last_name.unwrap_or_else(|| e.last_name.clone());
                    let status = inc.row.status.unwrap_or(Status::Active);
                    let mut lists: Vec<String> = Vec::new();
                    for l in extra_lists {
                        if !e.lists.contains(l) && !lists.contains(l) {
                            lists.push(l.clone());
                        }
                    }
                    let changed = inc.row.email != e.email
                        || first_name != e.first_name
                        || last_name != e.last_name
                        || attributes != e.attributes
                        || status != Status::Active
                        || !lists.is_empty();
                    if !changed {
                        self.report.unchanged += 1;
                        continue;
                    }
                    self.report.updated += 1;
                    upserts.push(Upsert {
                        id: Some(e.id),
                        event: match status {
                            Status::Active => "updated",
                            other => other.as_str(),
                        },
                        email: inc.row.email,
                        key: inc.key,
                        hash: inc.hash,
                        first_name,
                        last_name,
                        attributes: attributes_json(&attributes),
                        status,
                        lists,
                    });
                }
            }
        }
        self.apply(upserts).await?;
        Ok(skipped)
    }

    /// Records the batch's addresses as seen; rows seen in an earlier batch
    /// become skipped duplicates.
    async fn drop_seen(
        &mut self,
        incoming: Vec<Incoming>,
        skipped: &mut Vec<SkippedRow>,
    ) -> Result<Vec<Incoming>, StoreError> {
        if incoming.is_empty() {
            return Ok(incoming);
        }
        let scratch = self.tx.driver.scratch_table();
        let mut inserted = 0;
        for chunk in incoming.chunks(MAX_PARAMS / 2) {
            let mut sql = format!("INSERT INTO {scratch} (email_key, line) VALUES ");
            let mut args = Vec::with_capacity(chunk.len() * 2);
            for (i, inc) in chunk.iter().enumerate() {
                push_tuple(&mut sql, i, 2, 0);
                args.push(Val::Text(inc.key.clone()));
                args.push(Val::Int(inc.row.line as i64));
            }
            sql.push_str(" ON CONFLICT (email_key) DO NOTHING");
            inserted += self.tx.exec(&sql, args).await?;
        }
        if inserted as usize == incoming.len() {
            return Ok(incoming);
        }
        // Some were there already: from earlier batches, so earlier lines.
        let batch_start = incoming.iter().map(|i| i.row.line).min().unwrap_or(0);
        let mut earlier: HashMap<String, u64> = HashMap::new();
        for chunk in incoming.chunks(MAX_PARAMS - 1) {
            let (sql, mut args) = in_list(
                &format!("SELECT email_key, line FROM {scratch} WHERE line < $1 AND email_key IN "),
                1,
                chunk.iter().map(|i| i.key.clone()),
            );
            args.insert(0, Val::Int(batch_start as i64));
            for mut r in self.tx.fetch(&sql, args).await? {
                let line = r.int(1) as u64;
                earlier.insert(r.text(0), line);
            }
        }
        Ok(incoming
            .into_iter()
            .filter(|inc| match earlier.get(&inc.key) {
                Some(first) => {
                    skipped.push(SkippedRow {
                        line: inc.row.line,
                        reason: duplicate_reason(*first, &inc.key),
                    });
                    false
                }
                None => true,
            })
            .collect())
    }

    async fn drop_suppressed(
        &mut self,
        incoming: Vec<Incoming>,
    ) -> Result<Vec<Incoming>, StoreError> {
        if self.no_suppressions || incoming.is_empty() {
            return Ok(incoming);
        }
        let mut suppressed = HashSet::new();
        for chunk in incoming.chunks(MAX_PARAMS) {
            let (sql, args) = in_list(
                "SELECT email_hash FROM suppressions WHERE email_hash IN ",
                0,
                chunk.iter().map(|i| i.hash.clone()),
            );
            for mut r in self.tx.fetch(&sql, args).await? {
                suppressed.insert(r.text(0));
            }
        }
        self.report.suppressed += suppressed.len() as u64;
        Ok(incoming
            .into_iter()
            .filter(|i| !suppressed.contains(&i.hash))
            .collect())
    }

    /// Stored rows for these addresses, by key.
    async fn existing(
        &mut self,
        incoming: &[Incoming],
    ) -> Result<HashMap<String, Existing>, StoreError> {
        let mut found = HashMap::new();
        if self.store_empty || incoming.is_empty() {
            return Ok(found);
        }
        for chunk in incoming.chunks(MAX_PARAMS) {
            let (sql, args) = in_list(
                "SELECT id, email_key, email, first_name, last_name, attributes, status FROM subscribers WHERE email_key IN ",
                0,
                chunk.iter().map(|i| i.key.clone()),
            );
            for mut r in self.tx.fetch(&sql, args).await? {
                let key = r.text(1);
                found.insert(
                    key,
                    Existing {
                        id: r.int(0),
                        email: r.text(2),
                        first_name: r.text(3),
                        last_name: r.text(4),
                        attributes: parse_attributes(&r.text(5)),
                        status: parse_status(&r.text(6)),
                        lists: Vec::new(),
                    },
                );
            }
        }
        // Current lists matter only if the import adds some.
        let adds_lists =
            !self.options.lists.is_empty() || incoming.iter().any(|i| !i.row.lists.is_empty());
        if adds_lists && !found.is_empty() {
            let by_id: HashMap<i64, String> =
                found.iter().map(|(k, e)| (e.id, k.clone())).collect();
            let ids: Vec<i64> = by_id.keys().copied().collect();
            for chunk in ids.chunks(MAX_PARAMS) {
                let mut sql = String::from(
                    "SELECT subscriber_id, list FROM subscriber_lists WHERE subscriber_id IN (",
                );
                for i in 0..chunk.len() {
                    if i > 0 {
                        sql.push(',');
                    }
                    let _ = write!(sql, "${}", i + 1);
                }
                sql.push(')');
                let args = chunk.iter().map(|id| Val::Int(*id)).collect();
                for mut r in self.tx.fetch(&sql, args).await? {
                    if let Some(e) = by_id.get(&r.int(0)).and_then(|k| found.get_mut(k)) {
                        e.lists.push(r.text(1));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Writes new and changed rows, their new lists, and one event each.
    async fn apply(&mut self, upserts: Vec<Upsert>) -> Result<(), StoreError> {
        if upserts.is_empty() {
            return Ok(());
        }
        // $1 = now, $2 = source; 8 per row after that.
        const PER_ROW: usize = 8;
        let need_ids = upserts
            .iter()
            .any(|u| u.id.is_none() && !u.lists.is_empty());
        let mut ids: HashMap<String, i64> = HashMap::new();
        for chunk in upserts.chunks((MAX_PARAMS - 2) / PER_ROW) {
            let mut sql = String::from(
                "INSERT INTO subscribers (email, email_key, email_hash, first_name, last_name, attributes, status, unsubscribed_at, source, created_at, updated_at) VALUES ",
            );
            let mut args = Vec::with_capacity(2 + chunk.len() * PER_ROW);
            args.push(Val::Text(self.now.to_string()));
            args.push(Val::Text(self.options.source.clone()));
            for (i, u) in chunk.iter().enumerate() {
                push_tuple(&mut sql, i, PER_ROW, 2);
                // Shared values after the row's own.
                sql.truncate(sql.len() - 1);
                sql.push_str(", $2, $1, $1)");
                args.extend([
                    Val::Text(u.email.clone()),
                    Val::Text(u.key.clone()),
                    Val::Text(u.hash.clone()),
                    Val::Text(u.first_name.clone()),
                    Val::Text(u.last_name.clone()),
                    Val::Text(u.attributes.clone()),
                    Val::Text(u.status.as_str().into()),
                    if u.status == Status::Unsubscribed {
                        Val::Text(self.now.to_string())
                    } else {
                        Val::Null
                    },
                ]);
            }
            sql.push_str(
                " ON CONFLICT (email_key) DO UPDATE SET email = excluded.email, first_name = excluded.first_name, \
                 last_name = excluded.last_name, attributes = excluded.attributes, updated_at = excluded.updated_at, \
                 status = CASE WHEN subscribers.status = 'active' THEN excluded.status ELSE subscribers.status END, \
                 unsubscribed_at = CASE WHEN subscribers.status = 'active' THEN excluded.unsubscribed_at ELSE subscribers.unsubscribed_at END",
            );
            if need_ids {
                sql.push_str(" RETURNING email_key, id");
                for mut r in self.tx.fetch(&sql, args).await? {
                    let id = r.int(1);
                    ids.insert(r.text(0), id);
                }
            } else {
                self.tx.exec(&sql, args).await?;
            }
        }

        let memberships: Vec<(i64, &str)> = upserts
            .iter()
            .flat_map(|u| {
                let id = u.id.or_else(|| ids.get(&u.key).copied()).unwrap_or(0);
                u.lists.iter().map(move |l| (id, l.as_str()))
            })
            .collect();
        for chunk in memberships.chunks(MAX_PARAMS / 2) {
            let mut sql =
                String::from("INSERT INTO subscriber_lists (subscriber_id, list) VALUES ");
            let mut args = Vec::with_capacity(chunk.len() * 2);
            for (i, (id, list)) in chunk.iter().enumerate() {
                push_tuple(&mut sql, i, 2, 0);
                args.push(Val::Int(*id));
                args.push(Val::Text(list.to_string()));
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            self.tx.exec(&sql, args).await?;
        }

        for chunk in upserts.chunks((MAX_PARAMS - 2) / 2) {
            let mut sql = String::from(
                "INSERT INTO subscriber_events (email_hash, event, source, at) VALUES ",
            );
            let mut args = Vec::with_capacity(2 + chunk.len() * 2);
            args.push(Val::Text(self.now.to_string()));
            args.push(Val::Text(self.options.source.clone()));
            for (i, u) in chunk.iter().enumerate() {
                push_tuple(&mut sql, i, 2, 2);
                sql.truncate(sql.len() - 1);
                sql.push_str(", $2, $1)");
                args.push(Val::Text(u.hash.clone()));
                args.push(Val::Text(u.event.to_string()));
            }
            self.tx.exec(&sql, args).await?;
        }
        Ok(())
    }
}

/// A new or changed row, with its full new values.
struct Upsert {
    /// Stored id of a changed row; `None` for a new one.
    id: Option<i64>,
    event: &'static str,
    email: String,
    key: String,
    hash: String,
    first_name: String,
    last_name: String,
    attributes: String,
    status: Status,
    /// Lists to add.
    lists: Vec<String>,
}

/// Appends `($a, $a+1, …)` for row `i` of `width` values, after `offset`
/// shared parameters, with a separating comma when needed.
fn push_tuple(sql: &mut String, i: usize, width: usize, offset: usize) {
    if i > 0 {
        sql.push_str(", ");
    }
    sql.push('(');
    let base = offset + i * width;
    for j in 0..width {
        if j > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "${}", base + j + 1);
    }
    sql.push(')');
}

/// `prefix ($offset+1, $offset+2, …)` with the values as text arguments.
fn in_list(
    prefix: &str,
    offset: usize,
    values: impl Iterator<Item = String>,
) -> (String, Vec<Val>) {
    let mut sql = String::from(prefix);
    sql.push('(');
    let mut args = Vec::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            sql.push(',');
        }
        let _ = write!(sql, "${}", offset + i + 1);
        args.push(Val::Text(v));
    }
    sql.push(')');
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_number_their_parameters() {
        let mut sql = String::new();
        push_tuple(&mut sql, 0, 2, 2);
        push_tuple(&mut sql, 1, 2, 2);
        assert_eq!(sql, "($3, $4), ($5, $6)");
        let (sql, args) = in_list("x IN ", 1, ["a".to_string(), "b".to_string()].into_iter());
        assert_eq!(sql, "x IN ($2,$3)");
        assert_eq!(args.len(), 2);
    }
}
