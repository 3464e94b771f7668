//! `tidings serve`: the small web service beside the organisation's site.
//! It honours the unsubscribe links of every message (RFC 8058 one-click
//! POSTs and a confirmation page), shows sent issues in the browser, and
//! lists them with a feed. `archive` writes the same pages as files.
//! It reads and changes subscribers only through the `store`'s operations,
//! and must not import `cli`.
//!
//! axum's router runs on our own hyper accept loop: it adds a header-read
//! timeout (a slow client cannot hold a connection open forever) and a
//! bounded graceful shutdown. Every response carries the security headers;
//! every request is logged on one line without tokens or addresses.

pub mod archive;
pub mod issues;
pub mod pages;
pub mod unsubscribe;
pub mod watch;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use time::OffsetDateTime;

use crate::config::Config;
use crate::deliver::unsubscribe::Signer;
use crate::store::Store;
use crate::{Error, Result};
use issues::{Catalogue, Site};
use pages::{Listed, Pages};

/// Request bodies: a one-click POST or a button is a few dozen bytes.
pub const BODY_LIMIT: usize = 8 * 1024;
/// A whole request, body included, from the first header byte read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// For the request line and headers (also an idle kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// How long the list of sent issues is reused.
const SENT_TTL: Duration = Duration::from_secs(10);

/// The policy of every response; static archive pages carry it as a
/// `<meta>` (where `frame-ancestors` is ignored, so it is left out there).
pub const CSP_META: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'";
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'; frame-ancestors 'none'";

/// What the handlers share.
pub struct Shared {
    signer: Signer,
    store: Store,
    pages: Pages,
    catalogue: Catalogue,
    /// `scheme://host[:port]` of `newsletter.base_url`: what a browser
    /// sends as `Origin` from our own pages.
    origin: String,
    /// The configured provider webhooks (`[webhooks.*]`).
    webhooks: webhooks::Webhooks,
}

pub type AppState = Arc<Shared>;

impl Shared {
    /// The server's state for the configured project: opens the store,
    /// loads the templates.
    pub async fn new(config: Config, signer: Signer) -> Result<Shared> {
        let webhooks = webhooks::Webhooks::from_config(&config).map_err(Error::Usage)?;
        let store = Store::open(&config.database, &config.base_dir()).await?;
        let pages = Pages::new(&config.newsletter);
        let origin = origin_of(&config.newsletter.base_url);
        let catalogue = Catalogue::new(Arc::new(config), Site::Live, SENT_TTL)?;
        Ok(Shared {
            signer,
            store,
            pages,
            catalogue,
            origin,
            webhooks,
        })
    }
}

/// `https://News.example.org:443/path` -> `https://news.example.org`, as
/// a browser writes `Origin` (default ports left out).
pub(crate) fn origin_of(base_url: &str) -> String {
    let url = base_url.trim();
    let host_start = url.find("://").map_or(0, |i| i + 3);
    let end = url[host_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| host_start + i);
    let origin = url[..end].to_ascii_lowercase();
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if origin.starts_with(scheme)
            && let Some(bare) = origin.strip_suffix(port)
        {
            return bare.to_string();
        }
    }
    origin
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_are_what_browsers_send() {
        assert_eq!(
            origin_of("https://News.Example.org/n/"),
            "https://news.example.org"
        );
        assert_eq!(origin_of("https://x.org:443"), "https://x.org");
        assert_eq!(origin_of("http://x.org:80/"), "http://x.org");
        assert_eq!(origin_of("https://x.org:8443/a?b"), "https://x.org:8443");
    }
}

/// What a handler tells the access log besides the status: the issue of a
/// verified token and what happened. Never a token, address or hash.
#[derive(Debug, Clone)]
pub struct LogNote {
    issue: Option<String>,
    outcome: &'static str,
    /// Findings a webhook request carried.
    count: Option<usize>,
}

impl LogNote {
    fn new(issue: &str, outcome: &'static str) -> LogNote {
        LogNote {
            issue: Some(issue.to_string()),
            outcome,
            count: None,
        }
    }
    fn outcome(outcome: &'static str) -> LogNote {
        LogNote {
            issue: None,
            outcome,
            count: None,
        }
    }
    fn counted(outcome: &'static str, count: usize) -> LogNote {
        LogNote {
            issue: None,
            outcome,
            count: Some(count),
        }
    }
}

trait Note {
    fn note(self, note: LogNote) -> Response;
}

impl Note for Response {
    fn note(mut self, note: LogNote) -> Response {
        self.extensions_mut().insert(note);
        self
    }
}

fn html(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// The routes, with the limits, headers and log around them.
pub fn router(state: AppState) -> Router {
    let hooks = webhooks::routes(&state.webhooks);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/u/{token}", get(unsubscribe::page).post(unsubscribe::post))
        .route("/unsubscribe", get(help))
        .route("/", get(|| async { Redirect::to("/issues/") }))
        .route("/issues", get(index))
        .route("/issues/", get(index))
        .route("/issues/{slug}", get(issue))
        .route("/issues/{slug}/", get(issue))
        .route("/feed.xml", get(feed))
        .merge(hooks)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), limits))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.store.ping().await {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        log_error("health check: the database does not answer");
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

async fn help(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, state.pages.unsubscribe_help("/issues/"))
}

async fn not_found(State(state): State<AppState>) -> Response {
    html(StatusCode::NOT_FOUND, state.pages.not_found("/issues/"))
}

fn unavailable(state: &Shared, what: &str, e: impl std::fmt::Display) -> Response {
    log_error(&format!("{what}: {e}"));
    html(StatusCode::SERVICE_UNAVAILABLE, state.pages.unavailable())
}

fn page_failed(state: &Shared) -> Response {
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        state.pages.page_failed("/issues/"),
    )
    .note(LogNote::outcome("page-failed"))
}

async fn index(State(state): State<AppState>) -> Response {
    match state.catalogue.published(&state.store).await {
        Ok((published, left_out)) => {
            for l in &left_out {
                log_warn(l);
            }
            let listed: Vec<Listed<'_>> = published
                .iter()
                .map(|p| Listed {
                    sent: &p.sent,
                    info: &p.info,
                    href: format!("/issues/{}", p.sent.slug),
                })
                .collect();
            html(StatusCode::OK, state.pages.index(&listed, "/feed.xml"))
        }
        Err(e) => unavailable(&state, "list of issues", e),
    }
}

async fn feed(State(state): State<AppState>) -> Response {
    match state.catalogue.published(&state.store).await {
        Ok((published, _)) => {
            let listed: Vec<Listed<'_>> = published
                .iter()
                .map(|p| Listed {
                    sent: &p.sent,
                    info: &p.info,
                    href: String::new(),
                })
                .collect();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
                state.pages.feed(&listed),
            )
                .into_response()
        }
        Err(e) => unavailable(&state, "feed", e),
    }
}

async fn issue(
    State(state): State<AppState>,
    slug: Result<Path<String>, PathRejection>,
) -> Response {
    // Checked before any file name is made of it; drafts and unknown
    // slugs are the same 404.
    let Some(slug) = slug.ok().map(|Path(s)| s).filter(|s| issues::valid_slug(s)) else {
        return not_found(State(state)).await;
    };
    match state.catalogue.page(&state.store, &slug).await {
        Ok(Some((_, page))) => html(StatusCode::OK, page.to_string()),
        Ok(None) => not_found(State(state)).await,
        // Logged when it happened; the same 500 until the file changes.
        Err(issues::IssueError::FailedBefore(_)) => page_failed(&state),
        Err(e) if e.is_page_failure() => {
            log_error(&format!("issue {slug}: {e}"));
            page_failed(&state)
        }
        Err(e) => unavailable(&state, &format!("issue {slug}"), e),
    }
}

/// A declared body over the limit is refused at once, unread (axum's own
/// limit only notices once that much has arrived); then the whole request
/// gets [`REQUEST_TIMEOUT`].
async fn limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Providers' notifications are larger than a form post; the routes
    // themselves enforce the same limit on the bytes that arrive.
    let limit = match req.uri().path().starts_with("/webhooks/") {
        true => webhooks::WEBHOOK_BODY_LIMIT,
        false => BODY_LIMIT,
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return html(StatusCode::PAYLOAD_TOO_LARGE, state.pages.too_large())
            .note(LogNote::outcome("too-large"));
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => html(StatusCode::REQUEST_TIMEOUT, state.pages.timed_out())
            .note(LogNote::outcome("timeout")),
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let private = req.uri().path().starts_with("/u/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if private {
        // The pages of one person's link: never kept by a cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// UTC with milliseconds, e.g. `2026-11-26T11:03:05.362Z`.
pub(crate) fn now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::now_utc().format(format).unwrap_or_default()
}

/// One line per request on stderr: `key=value`, the route's template
/// (`/u/{token}`), never the path as requested.
async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method: Method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let mut res = next.run(req).await;
    let note = res.extensions_mut().remove::<LogNote>();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let mut line = format!(
        "time={} method={method} route={route} status={} ms={ms:.1}",
        now(),
        res.status().as_u16()
    );
    if let Some(n) = note {
        if let Some(issue) = n.issue.filter(|i| issues::valid_slug(i)) {
            line.push_str(&format!(" issue={issue}"));
        }
        line.push_str(&format!(" outcome={}", n.outcome));
        if let Some(count) = n.count {
            line.push_str(&format!(" count={count}"));
        }
    }
    eprintln!("{line}");
    res
}

/// A server-side problem, on stderr in the log's format.
pub fn log_error(msg: &str) {
    eprintln!("time={} level=error msg={:?}", now(), msg);
}

pub fn log_warn(msg: &str) {
    eprintln!("time={} level=warn msg={:?}", now(), msg);
}

/// Listens on `listen` and serves until SIGTERM or Ctrl-C, then finishes
/// the requests in flight (for at most [`SHUTDOWN_GRACE`]). Prints
/// `listening on http://ADDR` (the real port) on stdout once bound.
pub async fn run(state: Shared, listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| {
            Error::Serve(format!(
                "cannot listen on {listen}: {e} (is another process using it? choose another address with --listen)"
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Serve(format!("cannot read the listening address: {e}")))?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let hooks = state.webhooks.enabled();
        if !hooks.is_empty() {
            eprintln!(
                "time={} level=info msg={:?}",
                now(),
                format!("webhooks: /webhooks/{}", hooks.join(", /webhooks/"))
            );
        }
        let _ = out.flush();
    }
    let app = router(Arc::new(state));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(crate::shutdown::signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pass, and
                        // let in-flight requests free some.
                        log_error(&format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = http.serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(app.clone()),
                );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // Client resets and header timeouts end up here: the
                    // access log has every request that was answered.
                    let _ = conn.await;
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    eprintln!(
        "time={} level=info msg=\"shutting down: finishing requests in flight\"",
        now()
    );
    tokio::select! {
        _ = graceful.shutdown() => {
            eprintln!("time={} level=info msg=\"stopped\"", now());
        }
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            log_warn(&format!(
                "stopped with requests still in flight after {}s",
                SHUTDOWN_GRACE.as_secs()
            ));
        }
    }
    Ok(())
}
