//! Headless Chromium, driven from the command line (no CDP client).
//!
//! A page is measured at an exact viewport width by loading it in an
//! `<iframe>` of that width inside a small host page: headless Chromium will
//! not make its window narrower than 500 px, but an iframe is a viewport of
//! its own, media queries included. A copy of the page carries `probe.js`,
//! which measures after load and posts a JSON report to the host; Chromium's
//! `--dump-dom` prints the host with the report in it. Scrollbars are hidden
//! (`--hide-scrollbars`), as on a phone, so the whole width is the page's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::{ENV_CHROMIUM, describe, require_env, run};

const PROBE_JS: &str = include_str!("probe.js");
const REPORT_ID: &str = "tidings-probe-report";
/// How tall the measured viewport is: a long phone screen.
pub const VIEWPORT_HEIGHT: u32 = 3000;

pub struct Chromium {
    path: PathBuf,
}

/// What `probe.js` saw.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Report {
    /// `window.innerWidth`: the viewport really used.
    pub inner_width: f64,
    pub client_width: f64,
    /// The document's width; more than the viewport means the reader has
    /// to scroll sideways.
    pub scroll_width: f64,
    pub scroll_height: f64,
    /// How tall the content is, even when shorter than the viewport: the
    /// height for a full-page screenshot.
    pub content_height: f64,
    /// The outermost elements that stick out on the right.
    pub too_wide: Vec<Placed>,
    pub texts: Vec<TextReport>,
    pub links: Vec<Link>,
    /// A script error in the probe or a page that never reported.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Placed {
    pub element: String,
    #[serde(rename = "box")]
    pub rect: Rect,
    pub hidden_because: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Rect {
    pub left: f64,
    pub right: f64,
    pub width: f64,
    pub height: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TextReport {
    pub text: String,
    /// At least one element holding the whole text can be seen.
    pub visible: bool,
    /// Every innermost element holding the text, and why it is hidden.
    pub found: Vec<Placed>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Link {
    /// As written in the page.
    pub href: String,
    /// Resolved against the page.
    pub url: String,
    pub text: String,
    /// The text of the table row holding the link, if any.
    pub row: String,
}

impl Report {
    /// What is wrong with the page's layout at `width` px: the viewport was
    /// not `width`, it scrolls sideways, or a text in `texts` cannot be
    /// seen. Empty when all is well.
    pub fn layout_problems(&self, width: u32) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(e) = &self.error {
            problems.push(format!("the probe failed: {e}"));
            return problems;
        }
        if self.inner_width != f64::from(width) {
            problems.push(format!(
                "the viewport is {} px wide, not {width}: the measurement is void",
                self.inner_width
            ));
        }
        if self.client_width != self.inner_width {
            problems.push(format!(
                "the viewport's usable width is {} px of {}: a scrollbar takes room",
                self.client_width, self.inner_width
            ));
        }
        if self.scroll_width > self.inner_width {
            let culprits: Vec<String> = self
                .too_wide
                .iter()
                .map(|p| {
                    format!(
                        "{} ({} px wide, right edge at {})",
                        p.element, p.rect.width, p.rect.right
                    )
                })
                .collect();
            problems.push(format!(
                "the page scrolls sideways: it is {} px wide in a {} px viewport; sticking out: {}",
                self.scroll_width,
                self.inner_width,
                if culprits.is_empty() {
                    "(none found)".into()
                } else {
                    culprits.join(", ")
                }
            ));
        }
        for t in &self.texts {
            if t.visible {
                continue;
            }
            if t.found.is_empty() {
                problems.push(format!("text not found: {:?}", t.text));
            } else {
                let whys: Vec<String> = t
                    .found
                    .iter()
                    .map(|p| {
                        format!(
                            "{} at {}..{} ({}x{}): {}",
                            p.element,
                            p.rect.left,
                            p.rect.right,
                            p.rect.width,
                            p.rect.height,
                            p.hidden_because.as_deref().unwrap_or("?")
                        )
                    })
                    .collect();
                problems.push(format!(
                    "text not visible: {:?}: {}",
                    t.text,
                    whys.join("; ")
                ));
            }
        }
        problems
    }
}

impl Chromium {
    pub fn from_env() -> Chromium {
        let path = PathBuf::from(require_env(ENV_CHROMIUM, "headless Chromium"));
        assert!(
            path.is_file(),
            "${ENV_CHROMIUM} is {}, which does not exist: run scripts/test.sh",
            path.display()
        );
        Chromium { path }
    }

    /// Loads `page` in a viewport `width` px wide and returns what the probe
    /// measured, looking for each of `texts`.
    pub fn probe(&self, page: &Path, width: u32, texts: &[&str]) -> Report {
        let host = self.host_page(page, width, VIEWPORT_HEIGHT, texts, true);
        let output = self.run(&host, width, VIEWPORT_HEIGHT, &["--dump-dom"]);
        let dom = String::from_utf8_lossy(&output.stdout);
        let open = format!("<script type=\"application/json\" id=\"{REPORT_ID}\">");
        let json = dom
            .find(&open)
            .map(|i| &dom[i + open.len()..])
            .and_then(|rest| rest.find("</script>").map(|end| &rest[..end]))
            .unwrap_or_else(|| {
                panic!(
                    "Chromium printed no probe report for {} at {width} px:\n{}",
                    page.display(),
                    describe(&output)
                )
            });
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad probe report ({e}): {json}"))
    }

    /// Saves a PNG of `page` `width` px wide and `height` px tall (the host
    /// page around it is grey, so the edge of the viewport shows).
    pub fn screenshot(&self, page: &Path, width: u32, height: u32, png: &Path) {
        let host = self.host_page(page, width, height, &[], false);
        let arg = format!("--screenshot={}", png.display());
        let output = self.run(&host, width, height, &[&arg]);
        assert!(
            png.is_file(),
            "Chromium wrote no screenshot {}:\n{}",
            png.display(),
            describe(&output)
        );
    }

    /// Writes, beside `page`, a copy of it that carries the probe and a host
    /// page showing it in an iframe `width`x`height`.
    fn host_page(
        &self,
        page: &Path,
        width: u32,
        height: u32,
        texts: &[&str],
        probe: bool,
    ) -> PathBuf {
        let dir = page.parent().expect("a page in a folder");
        let stem = page.file_stem().unwrap().to_string_lossy();
        let html =
            std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let framed = if probe {
            let config = serde_json::json!({ "texts": texts });
            let script = format!(
                "<script>window.__tidingsProbe = {config};</script><script>{PROBE_JS}</script>"
            );
            let copy = dir.join(format!("{stem}.probe.html"));
            let with_probe = match html.rfind("</body>") {
                Some(i) => format!("{}{script}{}", &html[..i], &html[i..]),
                None => format!("{html}{script}"),
            };
            std::fs::write(&copy, with_probe).unwrap();
            copy
        } else {
            page.to_path_buf()
        };
        let src = url_path(&framed.file_name().unwrap().to_string_lossy());
        let host = dir.join(format!("{stem}.host-{width}.html"));
        std::fs::write(
            &host,
            format!(
                r#"<!doctype html><html><head><meta charset="utf-8"><style>
html, body {{ margin: 0; background: #8a8f94; }}
iframe {{ display: block; border: 0; background: #fff; width: {width}px; height: {height}px; }}
</style></head><body><iframe src="{src}" title="page under test"></iframe>
<script>
function put(json) {{
  var old = document.getElementById("{REPORT_ID}");
  if (old) old.remove();
  var s = document.createElement("script");
  s.type = "application/json";
  s.id = "{REPORT_ID}";
  s.textContent = json.replace(/</g, "\\u003c");
  document.body.appendChild(s);
}}
window.addEventListener("message", function (e) {{ put(String(e.data)); }});
{fallback}
</script></body></html>"#,
                fallback = if probe {
                    r#"setTimeout(function () { if (!document.getElementById("tidings-probe-report")) put(JSON.stringify({ error: "the page never reported: it did not finish loading, or a script error stopped the probe" })); }, 4500);"#
                } else {
                    ""
                }
            ),
        )
        .unwrap();
        host
    }

    fn run(&self, host: &Path, width: u32, height: u32, extra: &[&str]) -> std::process::Output {
        let profile = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(&self.path);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Remote images and fonts fail at once instead of leaving the
            // machine: a test renders only what is on disk.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // The window is wider than the iframe: headless Chromium's window
        // is at least 500 px wide.
        .arg(format!("--window-size={},{}", width.max(500) + 100, height))
        .args(extra)
        .arg(format!("file://{}", url_path(&host.display().to_string())));
        let output = run(&mut cmd, Duration::from_secs(90));
        assert!(
            output.status.success(),
            "Chromium failed on {} ({}):\n{}",
            host.display(),
            output.status,
            describe(&output)
        );
        output
    }
}

/// `path` with every byte but unreserved ones and `/` percent-encoded, for
/// a `file://` URL or a relative link.
fn url_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
