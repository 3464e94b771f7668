//! A new organisation's first hour, through the binary: `init`, `new`,
//! `check`, `preview`, a dry run, and `preview --watch` in a browser, in a
//! folder that holds no file from this repository.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn tidings(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = support::tidings();
    cmd.current_dir(dir).args(args);
    support::run(&mut cmd, Duration::from_secs(120))
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", support::describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn init_project(root: &Path) -> std::path::PathBuf {
    let out = tidings(
        root,
        &[
            "init",
            "letter",
            "--name",
            "Harbour Notes",
            "--from",
            "Harbour Notes <news@harbour.example>",
            "--postal-address",
            "2 Quay Road, Harbourtown",
            "--site-url",
            "https://harbour.example",
            "--base-url",
            "https://news.harbour.example",
            "--smtp-host",
            "smtp.harbour.example",
        ],
    );
    let text = ok(&out);
    assert!(text.starts_with("created a tidings project in letter:\n  tidings.toml\n  content/issue-1.md\n  subscribers/sample.csv\n  .gitignore\n"), "{text}");
    assert!(!text.contains("example values"), "{text}");
    root.join("letter")
}

#[test]
fn init_new_check_preview_and_dry_run() {
    let root = tempfile::tempdir().unwrap();
    let dir = init_project(root.path());
    let config = fs::read_to_string(dir.join("tidings.toml")).unwrap();
    assert!(config.contains("name = \"Harbour Notes\"\n"), "{config}");
    assert!(config.contains("from = \"Harbour Notes <news@harbour.example>\"\n"));
    assert!(
        config.contains("# reply_to = "),
        "every key is there, commented"
    );

    // A second init refuses and changes nothing.
    let again = tidings(root.path(), &["init", "letter", "--name", "X"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("already exist: `tidings init` never overwrites"),
        "{}",
        support::describe(&again)
    );
    assert_eq!(
        fs::read_to_string(dir.join("tidings.toml")).unwrap(),
        config
    );

    assert_eq!(
        ok(&tidings(&dir, &["new", "Getting Through the Holidays"])),
        "wrote content/issue-2.md\n"
    );
    let issue = fs::read_to_string(dir.join("content/issue-2.md")).unwrap();
    assert!(
        issue.starts_with("---\ntitle: \"Getting Through the Holidays\"\nissue: 2\ndate: 20"),
        "{issue}"
    );
    assert!(
        issue.contains("\n# authors:\n"),
        "optional keys commented: {issue}"
    );
    assert_eq!(
        ok(&tidings(&dir, &["check", "content/issue-2.md"])),
        "content/issue-2.md: ok (0 errors, 0 warnings)\n"
    );
    let preview = ok(&tidings(&dir, &["preview", "content/issue-2.md"]));
    assert_eq!(
        preview,
        "wrote 3 previews to out/preview/issue-2/index.html\n"
    );
    let html = fs::read_to_string(dir.join("out/preview/issue-2/ana@example.org.html")).unwrap();
    assert!(
        html.contains("Getting Through the Holidays") && html.contains("2 Quay Road, Harbourtown")
    );
    let dry = ok(&tidings(
        &dir,
        &[
            "send",
            "content/issue-2.md",
            "--dry-run",
            "--subscribers",
            "subscribers/sample.csv",
        ],
    ));
    assert!(dry.starts_with("dry run: wrote 3 messages to "), "{dry}");
    let eml = fs::read_to_string(dir.join("out/dry-run/issue-2/ana@example.org.eml")).unwrap();
    assert!(
        eml.contains("From: \"Harbour Notes\" <news@harbour.example>\r\n"),
        "{eml}"
    );
}

#[test]
fn init_without_a_terminal_or_flags_writes_marked_examples() {
    let root = tempfile::tempdir().unwrap();
    let text = ok(&tidings(root.path(), &["init", "blank"]));
    assert!(
        text.contains("example values (on example.org) were used for: newsletter.name, newsletter.from, newsletter.postal_address, newsletter.website, newsletter.base_url, smtp.host; edit tidings.toml before a real send\n"),
        "{text}"
    );
    let dir = root.path().join("blank");
    let config = fs::read_to_string(dir.join("tidings.toml")).unwrap();
    assert!(
        config.contains("# EXAMPLE VALUES: replace these before a real send:"),
        "{config}"
    );
    // It previews and dry-runs as it is.
    ok(&tidings(&dir, &["preview", "content/issue-1.md"]));
    ok(&tidings(
        &dir,
        &[
            "send",
            "content/issue-1.md",
            "--dry-run",
            "--subscribers",
            "subscribers/sample.csv",
        ],
    ));
}

#[test]
fn completions_and_man_page() {
    let root = tempfile::tempdir().unwrap();
    let bash = ok(&tidings(root.path(), &["completions", "bash"]));
    assert!(
        bash.contains("_tidings()") && bash.contains("--dry-run"),
        "{bash}"
    );
    let man = ok(&tidings(root.path(), &["man"]));
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq \\(aq") && man.contains(".TH tidings 1"),
        "{man}"
    );
    let version = ok(&tidings(root.path(), &["--version"]));
    assert!(version.starts_with("tidings 0.1.0 ("), "{version}");
}

#[test]
#[ignore = "needs Chromium and playwright-core: run scripts/test.sh"]
fn watch_reloads_the_page_on_every_save() {
    let chromium = support::require_env(support::ENV_CHROMIUM, "Chromium");
    let modules = Path::new(&support::require_env(
        support::ENV_MJML_DIR,
        "bench/node_modules",
    ))
    .join("node_modules");
    let root = tempfile::tempdir().unwrap();
    let dir = init_project(root.path());
    let mut server = support::tidings()
        .current_dir(&dir)
        .args([
            "preview",
            "content/issue-1.md",
            "--subscriber",
            "ana@example.org",
            "--watch",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("serving the preview on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    let shots = support::scratch_dir("watch");
    let mut node = Command::new("node")
        .arg(support::project_root().join("tests/support/watch.js"))
        .arg(&chromium)
        .arg(format!("{base}ana@example.org.html"))
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("watch.js answers (see its stderr above)");
        eprintln!("watch.js: {line}");
        line
    };
    assert_eq!(next(), "OPENED");
    let mut wait = |ms: u32, text: &str| {
        writeln!(stdin, "wait {ms} {text}").unwrap();
        let answer = next();
        assert!(
            answer.starts_with("SEEN "),
            "waiting for {text:?}: {answer}"
        );
    };
    wait(30_000, "Welcome to the first issue of Harbour Notes");

    let path = dir.join("content/issue-1.md");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace(
            "Welcome to the first issue",
            "Edited while watching: the first issue",
        ),
    )
    .unwrap();
    wait(2_000, "Edited while watching");

    // A broken front matter shows the error in the page…
    let edited = fs::read_to_string(&path).unwrap();
    fs::write(&path, edited.replacen("title: ", "title: [", 1)).unwrap();
    wait(2_000, "The preview could not be built");
    wait(100, "content/issue-1.md:2:");
    // …and fixing it brings the email back.
    fs::write(&path, &edited).unwrap();
    wait(2_000, "Edited while watching");

    writeln!(stdin, "quit").unwrap();
    assert!(node.wait().unwrap().success());
    let _ = server.kill();
    let _ = server.wait();
}
