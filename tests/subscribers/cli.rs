//! `tidings subscribers …` through the real binary, over a copy of the
//! fixture project in tests/fixtures/subscribers/project.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

/// A copy of the fixture project in a temp folder.
struct Project {
    dir: TempDir,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/subscribers/project");
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        Project { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file, as messages name it.
    fn db(&self) -> String {
        self.path()
            .join("subscribers/subscribers.db")
            .display()
            .to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("tidings").unwrap();
        cmd.current_dir(self.path())
            .arg("--config")
            .arg(self.path().join("tidings.toml"))
            .arg("subscribers")
            .args(args);
        // The binary refuses unknown TIDINGS_* variables (typos in config
        // overrides), and the test run itself sets TIDINGS_TEST_POSTGRES_URL.
        for (var, _) in std::env::vars() {
            if var.starts_with("TIDINGS_") {
                cmd.env_remove(var);
            }
        }
        cmd
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self
            .cmd(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    }

    fn set_database(&self, database: &str) {
        std::fs::write(
            self.path().join("tidings.toml"),
            format!("database = \"{database}\"\n"),
        )
        .unwrap();
    }
}

fn summary(verb: &str, file: &str, db: &str, rows: u64, counts: [u64; 7]) -> String {
    let [new, updated, unchanged, unsub, bounced, suppressed, skipped] = counts;
    format!(
        "{verb} {file} into {db}: {rows} row{}: {new} new, {updated} updated, {unchanged} unchanged, \
         {unsub} kept unsubscribed, {bounced} kept bounced, {suppressed} suppressed, {skipped} skipped\n",
        if rows == 1 { "" } else { "s" }
    )
}

#[test]
fn import_list_stats_export_round_trip() {
    let p = Project::new();
    assert_eq!(
        p.stdout(&["import", "members.csv", "--list", "monthly"]),
        summary("imported", "members.csv", &p.db(), 3, [3, 0, 0, 0, 0, 0, 0])
    );
    assert!(Path::new(&p.db()).is_file(), "created on first use");
    let csv = p.stdout(&["list", "--format", "csv"]);
    assert_eq!(
        csv,
        "email,first_name,last_name,city,lists,status\n\
         ana@example.org,Ana,Lima,Portland,monthly,active\n\
         bjorn@example.org,Björn,Åkesson,Bangor,monthly,active\n\
         hiro@example.org,宏,佐藤,Biddeford,monthly,active\n"
    );
    assert_eq!(
        p.stdout(&["stats"]),
        format!(
            "database: {}\nsubscribers: 3 (3 active, 0 unsubscribed, 0 bounced)\n\
             suppressed addresses: 0\nlists:\n  monthly: 3 active, 0 unsubscribed, 0 bounced\n",
            p.db()
        )
    );
    let table = p.stdout(&["list"]);
    assert!(
        table.starts_with("    ID  EMAIL                             NAME                      STATUS        LISTS\n     1  ana@example.org                   Ana Lima                  active        monthly\n"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&p.stdout(&["list", "--format", "json", "--list", "monthly"]))
            .unwrap();
    assert_eq!(json[1]["first_name"], "Björn");
    assert_eq!(json.as_array().unwrap().len(), 3);

    assert_eq!(
        p.stdout(&["export", "members-2026-11.csv"]),
        "exported 3 subscribers to members-2026-11.csv\n"
    );
    let exported = std::fs::read_to_string(p.path().join("members-2026-11.csv")).unwrap();
    assert_eq!(exported, csv);
    // Into a fresh project: the same subscribers.
    let q = Project::new();
    std::fs::copy(
        p.path().join("members-2026-11.csv"),
        q.path().join("members-2026-11.csv"),
    )
    .unwrap();
    assert_eq!(
        q.stdout(&["import", "members-2026-11.csv"]),
        summary(
            "imported",
            "members-2026-11.csv",
            &q.db(),
            3,
            [3, 0, 0, 0, 0, 0, 0]
        )
    );
    assert_eq!(q.stdout(&["list", "--format", "csv"]), csv);
}

#[test]
fn bad_rows_are_skipped_with_line_and_reason_exit_1() {
    let p = Project::new();
    p.cmd(&["import", "bad.csv"])
        .assert()
        .code(1)
        .stdout(summary(
            "imported",
            "bad.csv",
            &p.db(),
            6,
            [2, 0, 0, 0, 0, 0, 4],
        ))
        .stderr(
            "bad.csv: line 3: invalid email address \"ana@\": nothing after the @\n\
             bad.csv: line 4: empty email address\n\
             bad.csv: line 5: duplicate of line 2 (ana@example.org)\n\
             bad.csv: line 6: 3 fields, the header has 4\n\
             error: bad.csv: 4 rows skipped (listed above); the other rows were imported\n",
        );
    assert!(p.stdout(&["stats"]).contains("subscribers: 2 (2 active"));
}

#[test]
fn strict_imports_nothing_and_dry_run_writes_nothing() {
    let p = Project::new();
    p.cmd(&["import", "bad.csv", "--strict"])
        .assert()
        .code(1)
        .stdout(summary(
            "not imported (--strict), nothing written:",
            "bad.csv",
            &p.db(),
            6,
            [2, 0, 0, 0, 0, 0, 4],
        ))
        .stderr(predicate::str::ends_with(
            "error: bad.csv: 4 rows invalid (listed above); with --strict nothing was imported: fix them and import again\n",
        ));
    p.cmd(&["import", "members.csv", "--dry-run"])
        .assert()
        .success()
        .stdout(summary(
            "dry run, nothing written:",
            "members.csv",
            &p.db(),
            3,
            [3, 0, 0, 0, 0, 0, 0],
        ));
    assert!(p.stdout(&["stats"]).contains("subscribers: 0 (0 active"));
}

#[test]
fn bom_crlf_and_header_case_are_accepted() {
    let p = Project::new();
    // CRLF line ends and a blank line: the bad row is on line 4.
    p.cmd(&["import", "bom.csv"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "bom.csv: line 4: invalid email address \"bad@\": nothing after the @\n",
        ));
    assert_eq!(
        p.stdout(&["list", "--format", "csv"]),
        "email,first_name,last_name,lists,status\nzoe@example.org,Zoë,,,active\n"
    );
}

#[test]
fn add_unsubscribe_and_deliberate_resubscribe() {
    let p = Project::new();
    assert_eq!(
        p.stdout(&[
            "add",
            "ana@example.org",
            "--first-name",
            "Ana",
            "--attr",
            "City=Portland",
            "--list",
            "monthly"
        ]),
        "added ana@example.org\n"
    );
    assert_eq!(
        p.stdout(&["add", "ana@example.org", "--attr", "city=Portland"]),
        "ana@example.org is already subscribed (nothing changed)\n"
    );
    assert_eq!(
        p.stdout(&["unsubscribe", "Ana@Example.org"]),
        "unsubscribed Ana@Example.org\n"
    );
    p.cmd(&["add", "ana@example.org"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::is_match(
                r"^error: ana@example.org unsubscribed on \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: not subscribed again; if they asked to come back, run it again with --resubscribe\n$",
            )
            .unwrap(),
        );
    assert_eq!(
        p.stdout(&["add", "ana@example.org", "--resubscribe"]),
        "resubscribed ana@example.org\n"
    );
    assert_eq!(
        p.stdout(&["list", "--format", "csv"]),
        "email,first_name,last_name,city,lists,status\nana@example.org,Ana,,Portland,monthly,active\n"
    );
    p.cmd(&["add", "not-an-address"])
        .assert()
        .code(2)
        .stderr("error: invalid email address \"not-an-address\": no @\n");
    p.cmd(&["add", "x@example.org", "--attr", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "`nope` is not KEY=VALUE (e.g. city=Portland)",
        ));
}

#[test]
fn a_removed_person_comes_back_only_by_a_recorded_decision() {
    let p = Project::new();
    p.stdout(&["import", "members.csv"]);
    p.stdout(&["remove", "ana@example.org"]);
    p.cmd(&["add", "ana@example.org", "--after-removal", " "])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--after-removal needs who decided it and why",
        ));
    assert_eq!(
        p.stdout(&[
            "add",
            "ana@example.org",
            "--after-removal",
            "Bo: Ana asked by phone on 2026-12-01",
        ]),
        "added ana@example.org\n"
    );
    let stats = p.stdout(&["stats"]);
    assert!(stats.contains("subscribers: 3 (3 active"), "{stats}");
    assert!(stats.contains("suppressed addresses: 0"), "{stats}");
    // An unsubscribe is not lifted by it: that stays the person's own act.
    p.stdout(&["unsubscribe", "hiro@example.org"]);
    p.cmd(&["add", "hiro@example.org", "--after-removal", "Bo: cleanup"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("hiro@example.org unsubscribed"));
}

#[test]
fn remove_then_import_keeps_them_out() {
    let p = Project::new();
    p.stdout(&["import", "members.csv"]);
    assert_eq!(
        p.stdout(&["remove", "ana@example.org"]),
        "removed ana@example.org: data erased; a one-way hash of the address is kept so no import adds it back\n"
    );
    assert_eq!(
        p.stdout(&["import", "members.csv"]),
        summary("imported", "members.csv", &p.db(), 3, [0, 0, 2, 0, 0, 1, 0])
    );
    p.cmd(&["add", "ana@example.org", "--resubscribe"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("ana@example.org was removed on "))
        .stderr(predicate::str::contains(
            "(their data erased at their request): --resubscribe and imports do not bring them back. If they ask to come back, they sign up again, or you add them with --after-removal \"WHO decided it, and why\" (recorded in their history)\n",
        ));
    let stats = p.stdout(&["stats"]);
    assert!(stats.contains("subscribers: 2 (2 active"), "{stats}");
    assert!(stats.contains("suppressed addresses: 1"), "{stats}");
    // The address is nowhere in the database file.
    let bytes = std::fs::read(p.db()).unwrap();
    let wal = std::fs::read(format!("{}-wal", p.db())).unwrap_or_default();
    for b in [bytes, wal] {
        assert!(
            !b.windows(15).any(|w| w == b"ana@example.org"),
            "the removed address is still stored"
        );
    }
}

#[test]
fn database_that_cannot_be_opened_exits_2() {
    let p = Project::new();
    std::fs::write(p.path().join("notadir"), "a file").unwrap();
    p.set_database("sqlite:notadir/subscribers.db");
    let db = p.path().join("notadir/subscribers.db");
    p.cmd(&["stats"]).assert().code(2).stdout("").stderr(
        predicate::str::starts_with(format!(
            "error: cannot open SQLite database {}: cannot create folder",
            db.display()
        ))
        .and(predicate::str::ends_with(
            "(check the folder exists and is writable)\n",
        )),
    );
}

#[test]
fn locked_database_exits_2_and_writes_nothing() {
    use sqlx::Connection;
    let p = Project::new();
    p.stdout(&["import", "members.csv"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut holder = runtime.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", p.db()))
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut c)
            .await
            .unwrap();
        c
    });
    std::fs::write(
        p.path().join("more.csv"),
        "email\nnew1@example.org\nnew2@example.org\n",
    )
    .unwrap();
    p.cmd(&["import", "more.csv"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(format!(
            "error: database {} is locked by another process: wait for it to finish or stop it\n",
            p.db()
        ));
    runtime.block_on(async {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .unwrap();
        holder.close().await.unwrap();
    });
    assert!(p.stdout(&["stats"]).contains("subscribers: 3 (3 active"));
}

#[test]
fn postgres_down_exits_2_without_the_password() {
    let p = Project::new();
    p.cmd(&["stats"])
        .env(
            "TIDINGS_DATABASE_URL",
            "postgres://tidings:s3cret@127.0.0.1:1/tidings",
        )
        .assert()
        .code(2)
        .stdout("")
        .stderr(
            "error: cannot connect to PostgreSQL at postgres://tidings:***@127.0.0.1:1/tidings: \
             connection refused — is the server running? (set TIDINGS_DATABASE_URL or `database` in tidings.toml)\n",
        );
}

#[test]
fn unreadable_import_file_exits_2() {
    let p = Project::new();
    p.cmd(&["import", "missing.csv"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "error: cannot read missing.csv: No such file or directory",
        ));
    std::fs::write(p.path().join("nomail.csv"), "name,city\nAna,Portland\n").unwrap();
    p.cmd(&["import", "nomail.csv"])
        .assert()
        .code(2)
        .stderr(
            "error: nomail.csv:1: no `email` column (found: name, city): the first row must name the columns, one of them `email`\n",
        );
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn postgres_import_stats_export() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, name) = runtime.block_on(crate::common::create_pg_database());
    let p = Project::new();
    let run = |args: &[&str]| -> String {
        let out = p
            .cmd(args)
            .env("TIDINGS_DATABASE_URL", &url)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        run(&["import", "members.csv", "--list", "monthly"]),
        summary("imported", "members.csv", &url, 3, [3, 0, 0, 0, 0, 0, 0])
    );
    run(&["unsubscribe", "bjorn@example.org"]);
    assert_eq!(
        run(&["import", "members.csv"]),
        summary("imported", "members.csv", &url, 3, [0, 0, 2, 1, 0, 0, 0])
    );
    assert_eq!(
        run(&["list", "--format", "csv", "--status", "active"]),
        "email,first_name,last_name,city,lists,status\n\
         ana@example.org,Ana,Lima,Portland,monthly,active\n\
         hiro@example.org,宏,佐藤,Biddeford,monthly,active\n"
    );
    runtime.block_on(crate::common::drop_pg_database(&name));
}
