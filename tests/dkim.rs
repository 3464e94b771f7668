//! DKIM keys as OpenSSL writes them: a message signed by tidings (a dry
//! run's .eml) verified by an outside verifier (dkimpy) against the DNS
//! record `tidings check` printed. Key generation and verification need
//! `openssl` and `python3-dkim`: run them with scripts/test.sh.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const SELECTOR: &str = "news2026";

fn tidings(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
    c.current_dir(dir)
        .env("TIDINGS_UNSUBSCRIBE_SECRET", "dkim-secret-0123456789")
        .env_remove("TIDINGS_CONFIG")
        .env_remove("TIDINGS_DATABASE_URL")
        .env_remove("TIDINGS_DKIM_PRIVATE_KEY")
        .envs(envs.iter().copied())
        .args(args);
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The minimal project with a `[dkim]` section added.
fn project(dkim: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    support::copy_fixture("minimal", tmp.path());
    let path = tmp.path().join("tidings.toml");
    let config = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        format!("{config}\n[dkim]\nselector = \"{SELECTOR}\"\n{dkim}"),
    )
    .unwrap();
    tmp
}

/// `tidings check`'s record: (name, value), and its whole stdout.
fn check_record(dir: &Path, envs: &[(&str, &str)]) -> (String, String, String) {
    let out = tidings(dir, &["check", "content/hello.md"], envs);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{stdout}"))
            .to_string()
    };
    (
        field("  name:  "),
        field("  value: "),
        stdout + &text(&out.stderr),
    )
}

/// Signs with a key OpenSSL made, then dkimpy verifies the dry-run message
/// against the record `check` printed; a tampered copy must fail.
fn signed_and_verified(openssl: &[&[&str]], pem_label: &str, key_type: &str) {
    let tmp = project("key_file = \"dkim.pem\"\n");
    let dir = tmp.path();
    for args in openssl {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(*args)
            .output()
            .expect("openssl runs (install it; run scripts/test.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    }
    let pem = fs::read_to_string(dir.join("dkim.pem")).unwrap();
    assert!(
        pem.starts_with(&format!("-----BEGIN {pem_label}-----")),
        "{pem}"
    );
    let (name, value, _) = check_record(dir, &[]);
    assert_eq!(name, format!("{SELECTOR}._domainkey.example.org"));
    assert!(
        value.starts_with(&format!("v=DKIM1; k={key_type}; p=")),
        "{value}"
    );

    fs::write(dir.join("one.csv"), "email\nreader@example.org\n").unwrap();
    let out = tidings(
        dir,
        &[
            "send",
            "content/hello.md",
            "--dry-run",
            "--out",
            "dr",
            "--subscribers",
            "one.csv",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let eml = dir.join("dr/reader@example.org.eml");
    let python = std::env::var("TIDINGS_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dkim_verify.py"))
        .arg(&eml)
        .arg(&name)
        .arg(&value)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "dkimpy failed (install python3-dkim; run scripts/test.sh): {}",
        text(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"original": true, "tampered": false}),
        "{}",
        fs::read_to_string(&eml).unwrap()
    );
}

#[test]
#[ignore = "needs openssl and python3-dkim: run scripts/test.sh"]
fn rsa_pkcs1_key() {
    signed_and_verified(
        &[&["genrsa", "-traditional", "-out", "dkim.pem", "2048"]],
        "RSA PRIVATE KEY",
        "rsa",
    );
}

#[test]
#[ignore = "needs openssl and python3-dkim: run scripts/test.sh"]
fn rsa_pkcs8_key() {
    // OpenSSL 3's genrsa writes PKCS#8 (BEGIN PRIVATE KEY), like genpkey.
    signed_and_verified(
        &[&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "dkim.pem",
        ]],
        "PRIVATE KEY",
        "rsa",
    );
}

#[test]
#[ignore = "needs openssl and python3-dkim: run scripts/test.sh"]
fn ed25519_pkcs8_key() {
    signed_and_verified(
        &[&["genpkey", "-algorithm", "ed25519", "-out", "dkim.pem"]],
        "PRIVATE KEY",
        "ed25519",
    );
}

/// RFC 8032's first test key, as a base64 seed: no tool needed.
const SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";

#[test]
fn check_prints_the_record_and_the_alignment() {
    let env = [("TIDINGS_DKIM_PRIVATE_KEY", SEED)];
    let tmp = project("");
    let (name, value, out) = check_record(tmp.path(), &env);
    assert_eq!(name, "news2026._domainkey.example.org");
    assert_eq!(
        value,
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    );
    assert!(
        out.contains("DKIM: aligned: the signing domain is newsletter.from's domain (example.org)"),
        "{out}"
    );

    let tmp = project("domain = \"mail.example.org\"\n");
    let (name, _, out) = check_record(tmp.path(), &env);
    assert_eq!(name, "news2026._domainkey.mail.example.org");
    assert!(out.contains("DKIM: aligned (relaxed)"), "{out}");

    let tmp = project("domain = \"example.net\"\n");
    let (_, _, out) = check_record(tmp.path(), &env);
    assert!(
        out.contains("warning: DKIM: the signing domain example.net does not align with newsletter.from's domain example.org"),
        "{out}"
    );
}

#[test]
fn check_explains_a_key_that_cannot_sign() {
    let tmp = project("key_file = \"dkim.pem\"\n");
    fs::write(
        tmp.path().join("dkim.pem"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAMCAQA=\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = tidings(tmp.path(), &["check", "content/hello.md"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dkim.key_file "), "{stderr}");
    assert!(stderr.contains("dkim.pem is encrypted"), "{stderr}");
    assert!(
        stderr.contains("openssl pkey -in KEY -out dkim.pem"),
        "{stderr}"
    );
}
