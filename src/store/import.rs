//! CSV import: stage, then decide with set-based SQL, in one transaction.
//!
//! Phase 1 streams the file. A reader thread parses and validates rows
//! (one row in memory at a time), computes keys, hashes and the attributes'
//! JSON, and hands batches over a channel of two; the writer appends them
//! to per-import scratch tables in the database's temp schema (`stage`: one
//! row per valid line; `stage_lists`: its lists; `skips`: line and reason).
//! Appends in line order are sequential writes, and the process holds at
//! most a few batches, so memory does not grow with the file.
//!
//! Phase 2 lets the database do the rest with sorts and joins, which it
//! runs with bounded memory (spilling to temp files): the file-wide
//! duplicate check is one window query (the first line of each address is
//! kept; no set of keys is ever held in RAM); suppressed addresses and
//! people already unsubscribed or bounced are counted and dropped; rows of
//! active subscribers are compared page by page in Rust (attributes merge,
//! names kept when the file has no name column) and only real changes are
//! written; what is left is new, and goes in with one `INSERT … SELECT`.
//!
//! Why not row-by-row upserts: each new row lands at a random place in the
//! `email_key` and `email_hash` indexes; once they outgrow the page cache
//! SQLite writes a page to its log for nearly every row (3,400 rows/s for a
//! million rows, measured). So new rows are appended in line order, and on
//! SQLite a bulk load (at least as many new rows as were there) drops those
//! two indexes and builds them again with one sort each. On SQLite, which
//! shuts out other writers for the whole import, new rows also get their
//! ids up front (following the highest id, in line order), so list memberships are written
//! without looking anyone up.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;

use super::{
    Driver, MAX_PARAMS, StoreError, Tx, Val, attributes_json, parse_attributes, parse_status,
};
use crate::subscribers::csv::{CsvError, CsvRow, Header, Parsed, RowReader};
use crate::subscribers::model::{self, ImportOptions, ImportReport, SkippedRow, Status};
use crate::subscribers::{key_hash_hex, normalise_email};

/// Rows per batch and per page.
const BATCH: usize = 2000;
/// Batches in flight between the reader thread and the writer.
const QUEUE: usize = 2;
/// On SQLite, rebuild the address indexes after inserting at least this
/// many rows (and at least as many as were there).
const REBUILD_MIN_ROWS: u64 = 20_000;

/// The indexes a bulk load rebuilds (names and definitions as in the
/// migrations).
const ADDRESS_INDEXES: [(&str, &str); 2] = [
    (
        "subscribers_email_key",
        "CREATE UNIQUE INDEX subscribers_email_key ON subscribers (email_key)",
    ),
    (
        "subscribers_email_hash",
        "CREATE INDEX subscribers_email_hash ON subscribers (email_hash)",
    ),
];

type Reader = RowReader<std::io::BufReader<Box<dyn Read + Send>>>;

/// A valid row, with everything that needs no database already done.
struct Staged {
    line: i64,
    email: String,
    key: String,
    hash: String,
    first_name: Option<String>,
    last_name: Option<String>,
    /// JSON of the row's non-empty attribute cells.
    attributes: String,
    status: Option<Status>,
    /// Its own lists and `--list`, without repeats.
    lists: Vec<String>,
}

/// Up to `BATCH` valid rows, and the rows skipped among them; where the
/// database copies ([`Tx::copies`]), both already as COPY text for the
/// stage instead.
struct Batch {
    rows: Vec<Staged>,
    skipped: Vec<SkippedRow>,
    copy: Vec<u8>,
    copied_rows: u64,
    copied_skips: u64,
}

impl Batch {
    fn new(copy: bool) -> Batch {
        Batch {
            rows: Vec::with_capacity(if copy { 0 } else { BATCH }),
            skipped: Vec::new(),
            copy: Vec::with_capacity(if copy { BATCH * 256 } else { 0 }),
            copied_rows: 0,
            copied_skips: 0,
        }
    }

    fn lines(&self) -> usize {
        self.rows.len() + self.skipped.len() + (self.copied_rows + self.copied_skips) as usize
    }

    fn push(&mut self, parsed: Parsed, extra_lists: &[String], copy: bool) {
        match (parsed, copy) {
            (Parsed::Row(row), false) => self.rows.push(staged(row, extra_lists)),
            (Parsed::Skipped(s), false) => self.skipped.push(s),
            (Parsed::Row(row), true) => {
                let r = staged(row, extra_lists);
                let line = r.line.to_string();
                let lists = (!r.lists.is_empty()).then(|| r.lists.join(LIST_JOIN));
                super::postgres::copy_row(
                    &mut self.copy,
                    [
                        Some(line.as_str()),
                        (r.email != r.key).then_some(r.email.as_str()),
                        Some(r.key.as_str()),
                        Some(r.hash.as_str()),
                        r.first_name.as_deref(),
                        r.last_name.as_deref(),
                        Some(r.attributes.as_str()),
                        r.status.map(|s| s.as_str()),
                        lists.as_deref(),
                        None,
                    ],
                );
                self.copied_rows += 1;
            }
            (Parsed::Skipped(s), true) => {
                let line = s.line.to_string();
                let mut fields = [None; STAGE_COLUMNS];
                fields[0] = Some(line.as_str());
                fields[STAGE_COLUMNS - 1] = Some(s.reason.as_str());
                super::postgres::copy_row(&mut self.copy, fields);
                self.copied_skips += 1;
            }
        }
    }
}

/// The stage's columns, in the order COPY gets them.
const STAGE_COLUMNS: usize = 10;
const STAGE_COPY: &str = "(line, email, email_key, email_hash, first_name, last_name, attributes, status, lists, reason)";
/// Joins a row's lists in the stage's `lists` column (a list name never
/// holds it: see `model::check_list_name`).
const LIST_JOIN: &str = ";";

/// Scratch table names in the database's temp schema.
struct Scratch {
    stage: String,
    lists: String,
    skips: String,
}

impl Scratch {
    fn new(driver: &dyn Driver) -> Scratch {
        let schema = driver.temp_schema();
        Scratch {
            stage: format!("{schema}.tidings_import_stage"),
            lists: format!("{schema}.tidings_import_lists"),
            skips: format!("{schema}.tidings_import_skips"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.stage, &self.lists, &self.skips]
    }
}

pub(super) async fn import(
    driver: &dyn Driver,
    input: Box<dyn Read + Send>,
    path: &Path,
    options: ImportOptions,
    on_skip: &mut (dyn FnMut(&SkippedRow) + Send),
) -> Result<ImportReport, StoreError> {
    let mut extra_lists = Vec::new();
    for l in &options.lists {
        let l = l.trim();
        model::check_list_name(l).map_err(|e| StoreError::Invalid(format!("--list: {e}")))?;
        if !extra_lists.iter().any(|x| x == l) {
            extra_lists.push(l.to_string());
        }
    }
    // The header first: a file we cannot read is reported before the
    // database is locked.
    let reader = RowReader::new(std::io::BufReader::with_capacity(256 * 1024, input), path)?;

    let mut tx = Tx::begin(driver, true).await?;
    let scratch = Scratch::new(driver);
    let mut report = match run(&mut tx, &scratch, reader, &options, extra_lists, on_skip).await {
        Ok(report) => report,
        Err(e) => {
            tx.rollback().await.ok();
            return Err(e);
        }
    };
    if options.dry_run || (options.strict && report.skipped > 0) {
        tx.rollback().await?;
        return Ok(report);
    }
    for table in scratch.all() {
        tx.exec(&format!("DROP TABLE {table}"), vec![]).await?;
    }
    tx.commit().await?;
    report.written = true;
    Ok(report)
}

/// Phase timings on standard error with `TIDINGS_LOG` set (for the benchmark).
struct Laps(Option<std::time::Instant>);

impl Laps {
    fn new() -> Laps {
        Laps(std::env::var_os("TIDINGS_LOG").map(|_| std::time::Instant::now()))
    }
    fn lap(&self, what: &str) {
        if let Some(t0) = self.0 {
            eprintln!("import: {:>7.2}s {what}", t0.elapsed().as_secs_f64());
        }
    }
}

async fn run(
    tx: &mut Tx<'_>,
    scratch: &Scratch,
    reader: Reader,
    options: &ImportOptions,
    extra_lists: Vec<String>,
    on_skip: &mut (dyn FnMut(&SkippedRow) + Send),
) -> Result<ImportReport, StoreError> {
    let laps = Laps::new();
    let header = Arc::clone(reader.header());
    let Scratch {
        stage,
        lists,
        skips,
    } = scratch;
    for table in scratch.all() {
        tx.exec(&format!("DROP TABLE IF EXISTS {table}"), vec![])
            .await?;
    }
    // INTEGER PRIMARY KEY: SQLite's row id (no extra index); line numbers
    // fit PostgreSQL's 32-bit integer.
    for create in [
        format!(
            "CREATE TABLE {stage} (line INTEGER PRIMARY KEY, email TEXT, email_key TEXT, \
             email_hash TEXT, first_name TEXT, last_name TEXT, attributes TEXT, status TEXT, lists TEXT, reason TEXT)"
        ),
        format!(
            "CREATE TABLE {lists} (line INTEGER NOT NULL, list TEXT NOT NULL, PRIMARY KEY (line, list))"
        ),
        format!("CREATE TABLE {skips} (line INTEGER PRIMARY KEY, reason TEXT NOT NULL)"),
    ] {
        tx.exec(&create, vec![]).await?;
    }

    let mut report = ImportReport::default();
    load_file(tx, scratch, reader, extra_lists, &mut report).await?;
    for table in scratch.all() {
        if let Some(sql) = tx.driver.analyze_sql(table) {
            tx.exec(&sql, vec![]).await?;
        }
    }
    laps.lap("staged");

    // Duplicates in the file: every line after an address's first. The
    // grouping sorts keys only; lines are looked at for repeated keys alone.
    report.skipped += tx
        .exec(
            &format!(
                "INSERT INTO {skips} (line, reason) \
                 SELECT st.line, 'duplicate of line ' || CAST(d.first_line AS TEXT) || ' (' || st.email_key || ')' \
                 FROM (SELECT email_key, MIN(line) AS first_line FROM {stage} GROUP BY email_key HAVING COUNT(*) > 1) d \
                 JOIN {stage} st ON st.email_key = d.email_key AND st.line > d.first_line"
            ),
            vec![],
        )
        .await?;
    delete_staged(
        tx,
        stage,
        &format!("EXISTS (SELECT 1 FROM {skips} k WHERE k.line = {stage}.line)"),
    )
    .await?;
    emit_skips(tx, skips, on_skip).await?;
    laps.lap("duplicates");

    // With every other writer shut out (SQLite), facts checked now hold
    // for the whole import, and whole steps can be skipped.
    let exclusive = tx.driver.exclusive_writes();
    let empty = |table: &str| format!("SELECT COUNT(*) FROM (SELECT 1 FROM {table} LIMIT 1) x");
    let store_empty = exclusive && tx.count(&empty("subscribers"), vec![]).await? == 0;
    let no_suppressions = exclusive && tx.count(&empty("suppressions"), vec![]).await? == 0;

    if !no_suppressions {
        report.suppressed = delete_staged(
            tx,
            stage,
            &format!(
                "EXISTS (SELECT 1 FROM suppressions x WHERE x.email_hash = {stage}.email_hash)"
            ),
        )
        .await?;
    }
    if !store_empty {
        // Unsubscribed and bounced people: counted, and left exactly as they are.
        for mut r in tx
            .fetch(
                &format!(
                    "SELECT s.status, COUNT(*) FROM {stage} st JOIN subscribers s ON s.email_key = st.email_key \
                     WHERE s.status <> 'active' GROUP BY s.status"
                ),
                vec![],
            )
            .await?
        {
            let n = r.int(1) as u64;
            match parse_status(&r.text(0)) {
                Status::Unsubscribed => report.kept_unsubscribed += n,
                _ => report.kept_bounced += n,
            }
        }
        laps.lap("kept");
        // Rows identical to what is stored (the usual case when a file is
        // imported again) are counted and dropped in one statement: the
        // attributes' JSON is canonical (sorted keys, no spaces) on both
        // sides, so equal text means equal attributes. Anything else,
        // including stored attributes this file does not mention, goes
        // through the comparison in Rust.
        report.unchanged += delete_staged(
            tx,
            stage,
            &format!(
                    "EXISTS (SELECT 1 FROM subscribers s \
                     WHERE s.email_key = {stage}.email_key AND s.status = 'active' \
                     AND ({stage}.status IS NULL OR {stage}.status = 'active') \
                     AND COALESCE({stage}.email, {stage}.email_key) = s.email \
                     AND ({stage}.first_name IS NULL OR {stage}.first_name = s.first_name) \
                     AND ({stage}.last_name IS NULL OR {stage}.last_name = s.last_name) \
                     AND {stage}.attributes = s.attributes \
                     AND NOT EXISTS (SELECT 1 FROM {lists} sl WHERE sl.line = {stage}.line AND NOT EXISTS \
                     (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = sl.list)))"
            ),
        )
        .await?;
        laps.lap("unchanged");
        update_existing(tx, scratch, &header, options, &mut report).await?;
        laps.lap("compared");
        // What is left in the stage is new.
        delete_staged(
            tx,
            stage,
            &format!("EXISTS (SELECT 1 FROM subscribers s WHERE s.email_key = {stage}.email_key)"),
        )
        .await?;
        laps.lap("existing");
    }
    insert_new(tx, scratch, options, &mut report, &laps).await?;
    Ok(report)
}

/// `DELETE FROM stage WHERE <condition>` (which may refer to the stage as
/// `{stage}`), in line ranges where the database wants them
/// ([`Driver::delete_range`]).
async fn delete_staged(tx: &mut Tx<'_>, stage: &str, condition: &str) -> Result<u64, StoreError> {
    let Some(range) = tx.driver.delete_range() else {
        return tx
            .exec(&format!("DELETE FROM {stage} WHERE {condition}"), vec![])
            .await;
    };
    let max = tx
        .count(
            &format!("SELECT COALESCE(MAX(line), 0) FROM {stage}"),
            vec![],
        )
        .await? as i64;
    let sql = format!("DELETE FROM {stage} WHERE line > $1 AND line <= $2 AND {condition}");
    let (mut low, mut deleted) = (0i64, 0u64);
    while low < max {
        let high = low + range;
        deleted += tx.exec(&sql, vec![Val::Int(low), Val::Int(high)]).await?;
        low = high;
    }
    Ok(deleted)
}

/// Phase 1: the file into the scratch tables.
async fn load_file(
    tx: &mut Tx<'_>,
    scratch: &Scratch,
    mut reader: Reader,
    extra_lists: Vec<String>,
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    let copy = tx.copies();
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Batch>(QUEUE);
    let producer = tokio::task::spawn_blocking(move || -> Result<(), CsvError> {
        let mut batch = Batch::new(copy);
        while let Some(parsed) = reader.next_row()? {
            batch.push(parsed, &extra_lists, copy);
            if batch.lines() >= BATCH {
                let full = std::mem::replace(&mut batch, Batch::new(copy));
                if sender.blocking_send(full).is_err() {
                    // The writer stopped; it reports why.
                    return Ok(());
                }
            }
        }
        if batch.lines() > 0 {
            let _ = sender.blocking_send(batch);
        }
        Ok(())
    });

    let mut failed = None;
    if copy {
        // One COPY for the whole file, lists and skipped lines included;
        // split below.
        let (mut rows, mut skips) = (0, 0);
        let chunks = futures_util::stream::poll_fn(|cx| receiver.poll_recv(cx))
            .map(|batch: Batch| {
                rows += batch.copied_rows;
                skips += batch.copied_skips;
                batch.copy
            })
            .boxed();
        let copied = tx
            .copy_in(
                &format!("COPY {} {STAGE_COPY} FROM STDIN", scratch.stage),
                chunks,
            )
            .await;
        report.rows += rows + skips;
        report.skipped += skips;
        match copied {
            Ok(_) => {
                if let Err(e) = split_copied(tx, scratch, skips).await {
                    failed = Some(e);
                }
            }
            Err(e) => failed = Some(e),
        }
    } else {
        while let Some(batch) = receiver.recv().await {
            report.rows += (batch.rows.len() + batch.skipped.len()) as u64;
            report.skipped += batch.skipped.len() as u64;
            if let Err(e) = stage_batch(tx, scratch, batch).await {
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
        return Err(e);
    }
    read.map_err(StoreError::from)
}

/// After one COPY: each row's lists into their own table, skipped lines
/// into theirs.
async fn split_copied(tx: &mut Tx<'_>, scratch: &Scratch, skips: u64) -> Result<(), StoreError> {
    let Scratch {
        stage,
        lists,
        skips: skipped,
    } = scratch;
    tx.exec(
        &format!(
            "INSERT INTO {lists} (line, list) SELECT line, unnest(string_to_array(lists, '{LIST_JOIN}')) \
             FROM {stage} WHERE lists IS NOT NULL"
        ),
        vec![],
    )
    .await?;
    if skips > 0 {
        tx.exec(
            &format!(
                "INSERT INTO {skipped} (line, reason) SELECT line, reason FROM {stage} WHERE reason IS NOT NULL"
            ),
            vec![],
        )
        .await?;
        tx.exec(
            &format!("DELETE FROM {stage} WHERE reason IS NOT NULL"),
            vec![],
        )
        .await?;
    }
    Ok(())
}

/// Everything per row that needs no database, on the reader thread, with
/// as few allocations as it takes (they dominated the reader's time).
fn staged(row: CsvRow, extra_lists: &[String]) -> Staged {
    let key = normalise_email(&row.email);
    let hash = key_hash_hex(&key);
    let mut lists = row.lists;
    for l in extra_lists {
        if !lists.contains(l) {
            lists.push(l.clone());
        }
    }
    Staged {
        line: row.line as i64,
        email: row.email,
        key,
        hash,
        first_name: row.first_name,
        last_name: row.last_name,
        attributes: row.attributes,
        status: row.status,
        lists,
    }
}

async fn stage_batch(tx: &mut Tx<'_>, scratch: &Scratch, batch: Batch) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(batch.rows.len() * 8);
    let mut memberships = Vec::new();
    for r in batch.rows {
        for l in r.lists {
            memberships.extend([Val::Int(r.line), Val::Text(l)]);
        }
        values.extend([
            Val::Int(r.line),
            // Most addresses are their own key: store them once.
            if r.email == r.key {
                Val::Null
            } else {
                Val::Text(r.email)
            },
            Val::Text(r.key),
            Val::Text(r.hash),
            r.first_name.into(),
            r.last_name.into(),
            Val::Text(r.attributes),
            r.status.map(|s| s.as_str().to_string()).into(),
        ]);
    }
    if !values.is_empty() {
        tx.insert_rows(
            &format!(
                "INSERT INTO {} (line, email, email_key, email_hash, first_name, last_name, attributes, status)",
                scratch.stage
            ),
            8,
            values,
        )
        .await?;
    }
    if !memberships.is_empty() {
        tx.insert_rows(
            &format!("INSERT INTO {} (line, list)", scratch.lists),
            2,
            memberships,
        )
        .await?;
    }
    if !batch.skipped.is_empty() {
        let values = batch
            .skipped
            .into_iter()
            .flat_map(|s| [Val::Int(s.line as i64), Val::Text(s.reason)])
            .collect();
        tx.insert_rows(
            &format!("INSERT INTO {} (line, reason)", scratch.skips),
            2,
            values,
        )
        .await?;
    }
    Ok(())
}

/// Hands every skipped row to the caller, in line order, a page at a time.
async fn emit_skips(
    tx: &mut Tx<'_>,
    skips: &str,
    on_skip: &mut (dyn FnMut(&SkippedRow) + Send),
) -> Result<(), StoreError> {
    let mut last = -1i64;
    loop {
        let page = tx
            .fetch(
                &format!(
                    "SELECT line, reason FROM {skips} WHERE line > $1 ORDER BY line LIMIT {BATCH}"
                ),
                vec![Val::Int(last)],
            )
            .await?;
        let n = page.len();
        for mut r in page {
            last = r.int(0);
            on_skip(&SkippedRow {
                line: last as u64,
                reason: r.text(1),
            });
        }
        if n < BATCH {
            return Ok(());
        }
    }
}

/// Rows of active subscribers: compared in Rust a page at a time; only
/// real changes are written (with an event each).
async fn update_existing(
    tx: &mut Tx<'_>,
    scratch: &Scratch,
    header: &Header,
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    let Scratch { stage, lists, .. } = scratch;
    let mut last = 0i64;
    loop {
        let page = tx
            .fetch(
                &format!(
                    "SELECT st.line, COALESCE(st.email, st.email_key), st.email_key, st.email_hash, st.first_name, st.last_name, st.attributes, st.status, \
                     s.id, s.email, s.first_name, s.last_name, s.attributes \
                     FROM {stage} st JOIN subscribers s ON s.email_key = st.email_key \
                     WHERE s.status = 'active' AND st.line > $1 ORDER BY st.line LIMIT {BATCH}"
                ),
                vec![Val::Int(last)],
            )
            .await?;
        let (Some(first), Some(end)) = (
            page.first().map(|r| r.int(0)),
            page.last().map(|r| r.int(0)),
        ) else {
            return Ok(());
        };
        last = end;
        let full = page.len() == BATCH;

        // The file's lists for these lines, and what is stored for them.
        let mut file_lists: HashMap<i64, Vec<String>> = HashMap::new();
        for mut r in tx
            .fetch(
                &format!("SELECT line, list FROM {lists} WHERE line BETWEEN $1 AND $2"),
                vec![Val::Int(first), Val::Int(end)],
            )
            .await?
        {
            file_lists.entry(r.int(0)).or_default().push(r.text(1));
        }
        let ids: Vec<i64> = page
            .iter()
            .filter(|r| file_lists.contains_key(&r.int(0)))
            .map(|r| r.int(8))
            .collect();
        let mut stored_lists: HashMap<i64, Vec<String>> = HashMap::new();
        for chunk in ids.chunks(MAX_PARAMS) {
            let mut sql = String::from(
                "SELECT subscriber_id, list FROM subscriber_lists WHERE subscriber_id IN (",
            );
            for i in 0..chunk.len() {
                let _ = write!(sql, "{}${}", if i > 0 { "," } else { "" }, i + 1);
            }
            sql.push(')');
            for mut r in tx
                .fetch(&sql, chunk.iter().map(|id| Val::Int(*id)).collect())
                .await?
            {
                stored_lists.entry(r.int(0)).or_default().push(r.text(1));
            }
        }

        let mut changes = Vec::new();
        let mut memberships = Vec::new();
        for mut r in page {
            let (line, id) = (r.int(0), r.int(8));
            let (email, key, hash) = (r.text(1), r.text(2), r.text(3));
            let (first_name, last_name) = (r.opt_text(4), r.opt_text(5));
            let incoming = parse_attributes(&r.text(6));
            let status = r.opt_text(7).map_or(Status::Active, |s| parse_status(&s));
            let (old_email, old_first, old_last) = (r.text(9), r.text(10), r.text(11));
            let old_attributes = parse_attributes(&r.text(12));

            // Columns in the file set their attribute (an empty cell
            // removes it); attributes the file does not mention are kept.
            let mut attributes = old_attributes.clone();
            for name in header.attribute_names() {
                match incoming.get(name) {
                    Some(v) => attributes.insert(name.to_string(), v.clone()),
                    None => attributes.remove(name),
                };
            }
            let first_name = first_name.unwrap_or_else(|| old_first.clone());
            let last_name = last_name.unwrap_or_else(|| old_last.clone());
            let stored = stored_lists.get(&id);
            let before = memberships.len();
            for l in file_lists.remove(&line).unwrap_or_default() {
                if stored.is_none_or(|s| !s.contains(&l)) {
                    memberships.extend([Val::Int(id), Val::Text(l)]);
                }
            }
            let changed = email != old_email
                || first_name != old_first
                || last_name != old_last
                || attributes != old_attributes
                || status != Status::Active
                || memberships.len() > before;
            if !changed {
                report.unchanged += 1;
                continue;
            }
            report.updated += 1;
            changes.push(Change {
                email,
                key,
                hash,
                first_name,
                last_name,
                attributes,
                status,
            });
        }
        write_changes(tx, options, changes).await?;
        if !memberships.is_empty() {
            tx.insert_rows(
                "INSERT INTO subscriber_lists (subscriber_id, list)",
                2,
                memberships,
            )
            .await?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// A changed row of an active subscriber, with its full new values.
struct Change {
    email: String,
    key: String,
    hash: String,
    first_name: String,
    last_name: String,
    attributes: BTreeMap<String, String>,
    status: Status,
}

async fn write_changes(
    tx: &mut Tx<'_>,
    options: &ImportOptions,
    changes: Vec<Change>,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let now = super::stamp();
    // $1 = now, $2 = source; then the row's own values.
    const PER_ROW: usize = 8;
    for chunk in changes.chunks((MAX_PARAMS - 2) / PER_ROW) {
        let mut sql = String::from(
            "INSERT INTO subscribers (email, email_key, email_hash, first_name, last_name, attributes, status, unsubscribed_at, source, created_at, updated_at) VALUES ",
        );
        let mut args = vec![Val::Int(now), Val::Text(options.source.clone())];
        for (i, c) in chunk.iter().enumerate() {
            super::push_tuple(&mut sql, i, PER_ROW, 2);
            sql.truncate(sql.len() - 1);
            sql.push_str(", $2, $1, $1)");
            args.extend([
                Val::Text(c.email.clone()),
                Val::Text(c.key.clone()),
                Val::Text(c.hash.clone()),
                Val::Text(c.first_name.clone()),
                Val::Text(c.last_name.clone()),
                Val::Text(attributes_json(&c.attributes)),
                Val::Text(c.status.as_str().into()),
                if c.status == Status::Unsubscribed {
                    Val::Int(now)
                } else {
                    Val::NullInt
                },
            ]);
        }
        // The row exists, so this updates it; the CASE keeps an
        // unsubscribed or bounced status should another writer have set
        // one since the row was read (possible on PostgreSQL).
        sql.push_str(
            " ON CONFLICT (email_key) DO UPDATE SET email = excluded.email, first_name = excluded.first_name, \
             last_name = excluded.last_name, attributes = excluded.attributes, updated_at = excluded.updated_at, \
             status = CASE WHEN subscribers.status = 'active' THEN excluded.status ELSE subscribers.status END, \
             unsubscribed_at = CASE WHEN subscribers.status = 'active' THEN excluded.unsubscribed_at ELSE subscribers.unsubscribed_at END",
        );
        tx.exec(&sql, args).await?;
    }
    let mut events = Vec::with_capacity(changes.len() * 4);
    for c in changes {
        let event = match c.status {
            Status::Active => "updated",
            other => other.as_str(),
        };
        events.extend([
            Val::Text(c.hash),
            Val::Text(event.into()),
            Val::Text(options.source.clone()),
            Val::Int(now),
        ]);
    }
    tx.insert_rows(
        "INSERT INTO subscriber_events (email_hash, event, source, at)",
        4,
        events,
    )
    .await?;
    Ok(())
}

/// The stage now holds only new rows: one event each, the rows in line
/// order, then their list memberships.
async fn insert_new(
    tx: &mut Tx<'_>,
    scratch: &Scratch,
    options: &ImportOptions,
    report: &mut ImportReport,
    laps: &Laps,
) -> Result<(), StoreError> {
    let Scratch { stage, lists, .. } = scratch;
    let now = super::stamp();
    report.new = tx
        .count(&format!("SELECT COUNT(*) FROM {stage}"), vec![])
        .await?;
    if report.new == 0 {
        return Ok(());
    }
    let mut exclusive = tx.driver.exclusive_writes();
    // A bulk load (at least as many new rows as were there) rebuilds the
    // address indexes, where the database lets it; on a database others
    // write to, it shuts them out first (`Driver::bulk_load`).
    let bulk = tx.driver.bulk_load();
    let rebuild = (exclusive || bulk.is_some()) && report.new >= REBUILD_MIN_ROWS && {
        let existing = tx.count("SELECT COUNT(*) FROM subscribers", vec![]).await?;
        report.new >= existing
    };
    let rebuild_after = match bulk {
        Some((before, after)) if rebuild && !exclusive => {
            for sql in before {
                tx.exec(sql, vec![]).await?;
            }
            exclusive = true;
            after
        }
        _ => &[],
    };
    // Ids up front where nobody else can insert meanwhile: after the
    // highest id, in line order (line 2, the first row under the header,
    // gets the next id; skipped lines leave gaps).
    let max_id = if exclusive {
        tx.count("SELECT COALESCE(MAX(id), 0) FROM subscribers", vec![])
            .await? as i64
    } else {
        0
    };
    let base_id = max_id - 1;
    if rebuild {
        for (name, _) in ADDRESS_INDEXES {
            tx.exec(&format!("DROP INDEX {name}"), vec![]).await?;
        }
    }
    let (id_column, id_value) = if exclusive {
        ("id, ", "$3 + st.line, ")
    } else {
        ("", "")
    };
    let mut args = vec![Val::Text(options.source.clone()), Val::Int(now)];
    if exclusive {
        args.push(Val::Int(base_id));
    }
    tx.exec(
        &format!(
            "INSERT INTO subscribers ({id_column}email, email_key, email_hash, first_name, last_name, attributes, status, unsubscribed_at, source, created_at, updated_at) \
             SELECT {id_value}COALESCE(st.email, st.email_key), st.email_key, st.email_hash, COALESCE(st.first_name, ''), COALESCE(st.last_name, ''), st.attributes, \
             COALESCE(st.status, 'active'), CASE WHEN st.status = 'unsubscribed' THEN $2 END, $1, $2, $2 \
             FROM {stage} st ORDER BY st.line"
        ),
        args,
    )
    .await?;
    // One event each, in line order: read back from the rows just written
    // where their ids are known (cheaper than the scratch table).
    let event = "CASE WHEN status = 'active' THEN 'imported' ELSE status END";
    if exclusive {
        tx.exec(
            &format!(
                "INSERT INTO subscriber_events (email_hash, event, source, at) \
                 SELECT email_hash, {event}, source, created_at FROM subscribers WHERE id > $1 ORDER BY id"
            ),
            vec![Val::Int(max_id)],
        )
        .await?;
    } else {
        tx.exec(
            &format!(
                "INSERT INTO subscriber_events (email_hash, event, source, at) \
                 SELECT email_hash, {}, $1, $2 FROM {stage} st ORDER BY st.line",
                event.replace("status", "COALESCE(st.status, 'active')")
            ),
            vec![Val::Text(options.source.clone()), Val::Int(now)],
        )
        .await?;
    }
    laps.lap("new: subscribers and events");
    if rebuild {
        for (name, create) in ADDRESS_INDEXES {
            tx.exec(create, vec![]).await?;
            laps.lap(name);
        }
    }
    if exclusive {
        tx.exec(
            &format!(
                "INSERT INTO subscriber_lists (subscriber_id, list) \
                 SELECT $1 + sl.line, sl.list FROM {lists} sl JOIN {stage} st ON st.line = sl.line ORDER BY sl.line, sl.list"
            ),
            vec![Val::Int(base_id)],
        )
        .await?;
    } else {
        tx.exec(
            &format!(
                "INSERT INTO subscriber_lists (subscriber_id, list) \
                 SELECT s.id, sl.list FROM {lists} sl JOIN {stage} st ON st.line = sl.line \
                 JOIN subscribers s ON s.email_key = st.email_key ORDER BY s.id, sl.list"
            ),
            vec![],
        )
        .await?;
    }
    laps.lap("new: lists");
    for sql in rebuild_after {
        tx.exec(sql, vec![]).await?;
    }
    if !rebuild_after.is_empty() {
        laps.lap("new: list keys");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::push_tuple;

    #[test]
    fn tuples_number_their_parameters() {
        let mut sql = String::new();
        push_tuple(&mut sql, 0, 2, 2);
        push_tuple(&mut sql, 1, 2, 2);
        assert_eq!(sql, "($3, $4), ($5, $6)");
    }
}
