//! `tidings preview` and `tidings check` on small whole projects: the real
//! binary, real files, the exact messages a user sees.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// A copy of `tests/fixtures/<name>` in a temp dir, to change and run in.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn from_fixture(name: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        support::copy_fixture(name, dir.path());
        Project { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
        self
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::cargo_bin("tidings")
            .unwrap()
            .current_dir(self.dir.path())
            .env_remove("TIDINGS_UNSUBSCRIBE_SECRET")
            .env_remove("TIDINGS_CONFIG")
            .args(args)
            .output()
            .unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn preview_writes_gallery_emails_text_and_eml() {
    let p = Project::from_fixture("minimal");
    let out = p.run(&["preview", "content/hello.md", "--emit-mjml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("wrote 2 previews to out/preview/hello/index.html"));
    let index = p.read("out/preview/hello/index.html");
    for stem in ["ana@example.org", "zoe@example.org"] {
        for suffix in [".html", ".txt", ".compare.html", ".eml"] {
            assert!(
                index.contains(&format!("href=\"{stem}{suffix}\"")),
                "{stem}{suffix} not linked"
            );
            assert!(
                p.path(&format!("out/preview/hello/{stem}{suffix}"))
                    .exists()
            );
        }
    }
    assert!(
        index.contains("Ana Lima &lt;ana@example.org&gt;"),
        "{index}"
    );
    let compare = p.read("out/preview/hello/ana@example.org.compare.html");
    assert!(compare.contains("class=\"phone\""));
    assert!(compare.contains(".phone { width: 375px; }"));
    assert!(compare.contains(".desktop { width: 700px; }"));
    let html = p.read("out/preview/hello/ana@example.org.html");
    assert!(html.contains("Hi Ana,"));
    assert!(html.contains("Small steps add up."));
    assert!(!html.contains("[[tidings:"), "a token was left unfilled");
    assert!(!html.contains("fonts.googleapis.com"), "no web-font link");
    let mjml = p.read("out/preview/hello/hello.mjml");
    assert!(mjml.starts_with("<mjml"), "{}", &mjml[..80]);
    assert!(mjml.contains("[[tidings:first_name|friend]]"));
}

#[test]
fn one_recipient_and_unknown_recipient() {
    let p = Project::from_fixture("minimal");
    let out = p.run(&[
        "preview",
        "content/hello.md",
        "--subscriber",
        "ZOE@example.org",
        "--out",
        "one",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.path("one/zoe@example.org.html").exists());
    assert!(!p.path("one/ana@example.org.html").exists());
    // A missing first name falls back to the template's default.
    let html = p.read("one/zoe@example.org.html");
    assert!(html.contains("Hi Zoë,"), "non-ASCII name kept");

    let out = p.run(&[
        "preview",
        "content/hello.md",
        "--subscriber",
        "nobody@example.org",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: no subscriber `nobody@example.org` in the recipient list: check the address, or pass --subscribers FILE.csv\n"
    );
}

#[test]
fn subscriber_fields_are_escaped_and_never_evaluated() {
    let p = Project::from_fixture("minimal");
    p.write(
        "hostile.csv",
        "email,first_name,last_name,city\n\
         evil@example.org,<script>alert(1)</script>,{{ newsletter.name }},\"A & B \"\"quoted\"\"\"\n\
         friend@example.org,,,\n",
    );
    p.write(
        "templates/partials/footer.mjml",
        "<mj-section><mj-column><mj-text>City: {{ subscriber.city | default(value=\"somewhere\") }} <a href=\"{{ subscriber.unsubscribe_url }}\">Unsubscribe</a></mj-text></mj-column></mj-section>",
    );
    let out = p.run(&[
        "preview",
        "content/hello.md",
        "--subscribers",
        "hostile.csv",
        "--out",
        "o",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = p.read("o/evil@example.org.html");
    assert!(
        html.contains("Hi &lt;script&gt;alert(1)&lt;/script&gt;,"),
        "first name escaped"
    );
    assert!(!html.contains("<script>alert(1)"));
    assert!(html.contains("City: A &amp; B &quot;quoted&quot;"));
    let text = p.read("o/evil@example.org.txt");
    assert!(
        text.contains("Hi <script>alert(1)</script>,"),
        "text part is not HTML"
    );
    // The To header, as read back from the .eml by the gallery.
    let index = p.read("o/index.html");
    assert!(
        index.contains(
            "&lt;script&gt;alert(1)&lt;/script&gt; {{ newsletter.name }} &lt;evil@example.org&gt;"
        ),
        "template syntax in data stays literal: {index}"
    );
    let html = p.read("o/friend@example.org.html");
    assert!(html.contains("Hi friend,"));
    assert!(html.contains("City: somewhere"));
}

#[test]
fn user_template_overrides_built_in() {
    let p = Project::from_fixture("minimal");
    p.write(
        "templates/partials/cta.mjml",
        "<mj-section><mj-column><mj-text>Custom call to action for {{ newsletter.name }}</mj-text></mj-column></mj-section>",
    );
    let out = p.run(&["preview", "content/hello.md"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = p.read("out/preview/hello/ana@example.org.html");
    assert!(html.contains("Custom call to action for Test Letter"));
    // The rest of the built-in layout is still there.
    assert!(html.contains("View in browser"));
}

#[test]
fn plain_text_part_reads_well() {
    let p = Project::from_fixture("minimal");
    let out = p.run(&["preview", "content/hello.md"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = p.read("out/preview/hello/ana@example.org.txt");
    for expected in [
        "Test Letter | Issue 3 | October 2026\n",
        "Hello Readers\n\nHi Ana,\n\nWelcome to the _third_ issue.\n\n## First section\n\n",
        "Read the guide (https://example.org/guide) or mail help@example.org.\n- one point\n- another point\n\n",
        "    \"Small steps add up.\"\n\n## Second section\n\nThat is all.\n",
        "View in browser: https://news.example.org/issues/hello\n",
        "Unsubscribe: https://news.example.org/u/v2.hello.",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains('<'), "no markup in the text part:\n{text}");
}

#[test]
fn check_passes_with_warnings_and_fails_on_errors() {
    let p = Project::from_fixture("minimal");
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "content/hello.md: ok (0 errors, 0 warnings)\n"
    );

    p.write(
        "content/warn.md",
        "---\ntitle: Warn\n---\nNo preheader here.\n",
    );
    let out = p.run(&["check", "content/warn.md"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stderr(&out),
        "content/warn.md:2: warning: no `preheader`: inboxes will show the first words of the email instead\n"
    );

    p.write(
        "content/bad.md",
        "---\ntitle: Bad\npreheader: p\n---\nText.\n\n![](https://example.org/a.png)\n\nSee [this](/relative/page).\n",
    );
    let out = p.run(&["check", "content/bad.md"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "content/bad.md:7: error: image `https://example.org/a.png` has no alt text: write ![what the image shows](https://example.org/a.png)\n\
         content/bad.md:9: error: link `/relative/page` is neither http(s), mailto nor tel: emails need absolute links, e.g. https://example.org/page\n\
         error: content/bad.md: 2 errors, 0 warnings\n"
    );
}

#[test]
fn bad_yaml_is_an_error_with_file_and_line() {
    let p = Project::from_fixture("minimal");
    p.write(
        "content/broken.md",
        "---\ntitle: Broken\nissue: three\n---\nBody\n",
    );
    let out = p.run(&["check", "content/broken.md"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: content/broken.md:3:8: front matter: issue: invalid type: string \"three\", expected u32\n"
    );
}

#[test]
fn missing_title_is_an_error() {
    let p = Project::from_fixture("minimal");
    p.write("content/untitled.md", "---\nissue: 4\n---\nBody\n");
    let out = p.run(&["preview", "content/untitled.md"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: content/untitled.md:2:1: front matter: missing required field `title`: add a line `title: Your issue title`\n"
    );
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let p = Project::from_fixture("minimal");
    let config = p
        .read("tidings.toml")
        .replace("[smtp]\n", "[smtp]\nhots = \"x\"\n");
    p.write("tidings.toml", &config);
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: tidings.toml:11:1: unknown key `hots`, expected one of "),
        "{err}"
    );
    assert!(
        err.ends_with("; check the spelling or remove it\n"),
        "{err}"
    );
}

#[test]
fn undefined_template_variable_names_template_line_and_variable() {
    let p = Project::from_fixture("minimal");
    p.write(
        "templates/partials/related.mjml",
        "{# related #}\n<mj-section><mj-column>\n<mj-text>{{ issue.subtitle }}</mj-text>\n</mj-column></mj-section>\n",
    );
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: templates/partials/related.mjml:3:19: Field `subtitle` is not defined. Available fields: authors, date, extra, month, number, preheader, related, slug, title\n  | <mj-text>{{ issue.subtitle }}</mj-text>\n"
    );
}

#[test]
fn a_template_that_loops_for_ever_is_stopped() {
    let p = Project::from_fixture("minimal");
    p.write(
        "templates/email.txt",
        "{% for i in range(end=100000) %}{% for j in range(end=100000) %}{% for k in range(end=100000) %}{{ issue.title }}{% endfor %}{% endfor %}{% endfor %}\n",
    );
    let start = std::time::Instant::now();
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: templates/email.txt: rendering stopped: more than 2 MiB of output (a loop that never ends?); an email must stay under Gmail's 102 KB anyway\n"
    );
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
}

#[test]
fn a_template_that_loops_for_ever_silently_is_stopped_by_time() {
    let p = Project::from_fixture("minimal");
    p.write(
        "templates/email.txt",
        "{% for i in range(end=100000) %}{% for j in range(end=100000) %}{% for k in range(end=100000) %}{% endfor %}{% endfor %}{% endfor %}\n",
    );
    let start = std::time::Instant::now();
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: templates/email.txt: rendering stopped: it took more than 5 s (a loop that never ends?)\n"
    );
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
}

#[test]
fn oversized_html_is_an_error() {
    let p = Project::from_fixture("minimal");
    let para = "This paragraph is long enough to fill the email quickly. ".repeat(40);
    let body: String = (0..60)
        .map(|i| format!("## Part {i}\n\n{para}\n\n"))
        .collect();
    p.write(
        "content/huge.md",
        &format!("---\ntitle: Huge\npreheader: p\n---\n{body}"),
    );
    let out = p.run(&["check", "content/huge.md"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("rendered HTML: error: HTML is ")
            && err.contains(" bytes, over Gmail's 102 KB clipping limit (104448 bytes): Gmail would cut the message and its unsubscribe link; shorten the issue or split it\n"),
        "{err}"
    );
}

#[test]
fn template_without_unsubscribe_link_is_an_error() {
    let p = Project::from_fixture("minimal");
    p.write(
        "templates/partials/footer.mjml",
        "<mj-section><mj-column><mj-text>Bye</mj-text></mj-column></mj-section>",
    );
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("rendered HTML: error: there is no unsubscribe link: add <a href=\"{{ subscriber.unsubscribe_url }}\">Unsubscribe</a> to the template"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn filtered_subscriber_field_is_reported() {
    let p = Project::from_fixture("minimal");
    p.write(
        "templates/partials/cta.mjml",
        "<mj-section><mj-column><mj-text>{{ subscriber.first_name | upper }}</mj-text></mj-column></mj-section>",
    );
    let out = p.run(&["check", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("templates/partials/cta.mjml:1:36: error: `subscriber.first_name | upper`: subscriber fields are filled in for each recipient after the issue is rendered, so they take no filter but `default(value=…)`\n")
            && !stderr(&out).contains("TIDINGS:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_bundled_example_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::cargo_bin("tidings")
        .unwrap()
        .current_dir(root)
        .env_remove("TIDINGS_CONFIG")
        .args(["check", "content/issue-17.md"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn preview_uses_the_store_once_it_has_subscribers() {
    let p = Project::from_fixture("minimal");
    let out = p.run(&[
        "subscribers",
        "add",
        "kim@example.org",
        "--first-name",
        "Kim",
        "--attr",
        "city=Bath",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["preview", "content/hello.md", "--out", "s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("previewing the one active subscriber in "),
        "{}",
        stderr(&out)
    );
    assert!(p.read("s/kim@example.org.html").contains("Hi Kim,"));
    assert!(
        !p.path("s/ana@example.org.html").exists(),
        "not the sample list"
    );
    // One subscriber from the store by address.
    let out = p.run(&[
        "preview",
        "content/hello.md",
        "--subscriber",
        "KIM@example.org",
        "--out",
        "one",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.path("one/kim@example.org.html").exists());
}

#[test]
fn preview_without_a_store_uses_the_sample_list_and_creates_no_database() {
    let p = Project::from_fixture("minimal");
    let out = p.run(&["preview", "content/hello.md"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p.path("out/preview/hello/ana@example.org.html").exists());
    assert!(!p.path("subscribers/subscribers.db").exists());
}
