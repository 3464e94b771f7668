//! `tidings preview --watch`: the preview gallery on a local web server,
//! rebuilt on every save of the issue, its templates or the config, and
//! reloaded in the browser through server-sent events. A build error
//! replaces the page with the error instead of stopping the server.
//!
//! This module knows nothing of how a preview is built: the caller hands
//! it a `build` function (run on a plain thread, never inside the server's
//! runtime) that writes the gallery into `out` or returns the error text.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::broadcast;

use crate::{Error, Result};

/// The page's reload hook: only the top-level page listens, so the frames
/// of the gallery reload with it, once.
const RELOAD_SCRIPT: &str = "<script>(function(){if(window.top!==window)return;\
var es=new EventSource('/__tidings/events');es.onmessage=function(){location.reload();};})();</script>";

/// How long after the last write a rebuild starts (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(150);

type Build = dyn Fn() -> std::result::Result<(), String> + Send + Sync;

struct Watch {
    out: PathBuf,
    /// The last build's error, shown instead of the gallery.
    error: Mutex<Option<String>>,
    reload: broadcast::Sender<()>,
}

/// Builds once, then serves `out` on `listen` and rebuilds whenever a file
/// in one of the `folders` (with subfolders) or one of the `files` changes
/// (nothing inside `out` counts), until Ctrl-C or SIGTERM.
pub fn run(
    build: Box<Build>,
    folders: Vec<PathBuf>,
    files: Vec<PathBuf>,
    out: PathBuf,
    listen: SocketAddr,
) -> Result<()> {
    let (reload, _) = broadcast::channel(16);
    let state = Arc::new(Watch {
        out: out.clone(),
        error: Mutex::new(None),
        reload,
    });
    let build: Arc<Build> = Arc::from(build);
    rebuild(&state, &*build);

    let out_abs = std::fs::canonicalize(&out).unwrap_or(out.clone());
    // Absolute paths, as notify reports them. A file is watched through its
    // folder: editors save by replacing the file, which ends a watch on it.
    let abs_folders: Vec<PathBuf> = folders
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect();
    let abs_files: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| {
            let parent = f.parent().filter(|p| !p.as_os_str().is_empty());
            let dir = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()?;
            Some(dir.join(f.file_name()?))
        })
        .collect();
    let relevant = {
        let (folders, files) = (abs_folders.clone(), abs_files.clone());
        move |p: &Path| {
            !p.starts_with(&out_abs)
                && (folders.iter().any(|f| p.starts_with(f)) || files.iter().any(|f| p == f))
        }
    };
    // notify reports every open and read too (the build's own): only
    // writes, creations, removals and renames count.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let writes = matches!(
            event.kind,
            notify::EventKind::Create(_)
                | notify::EventKind::Modify(_)
                | notify::EventKind::Remove(_)
        );
        if writes && event.paths.iter().any(|p| relevant(p)) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| Error::Serve(format!("cannot watch files: {e}")))?;
    let watcher_state = state.clone();
    let watcher_build = build.clone();
    std::thread::spawn(move || {
        // Debounced: a save is often several writes; build once they stop.
        while rx.recv().is_ok() {
            while rx.recv_timeout(DEBOUNCE).is_ok() {}
            rebuild(&watcher_state, &*watcher_build);
        }
    });
    use notify::Watcher;
    let mut shown = Vec::new();
    for (dir, mode, name) in abs_folders
        .iter()
        .zip(&folders)
        .map(|(a, f)| (a.clone(), notify::RecursiveMode::Recursive, f))
        .chain(abs_files.iter().zip(&files).filter_map(|(a, f)| {
            Some((
                a.parent()?.to_path_buf(),
                notify::RecursiveMode::NonRecursive,
                f,
            ))
        }))
    {
        watcher
            .watch(&dir, mode)
            .map_err(|e| Error::Serve(format!("cannot watch {}: {e}", name.display())))?;
        shown.push(name.display().to_string());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Serve(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve(state, listen, &shown))?;
    drop(watcher);
    Ok(())
}

fn rebuild(state: &Watch, build: &Build) {
    let started = Instant::now();
    let result = build();
    match &result {
        Ok(()) => eprintln!("rebuilt in {} ms", started.elapsed().as_millis()),
        Err(e) => eprintln!("{e}"),
    }
    *state.error.lock().unwrap() = result.err();
    let _ = state.reload.send(());
}

async fn serve(state: Arc<Watch>, listen: SocketAddr, watched: &[String]) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
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
        let _ = writeln!(out, "serving the preview on http://{addr}/");
        let _ = out.flush();
    }
    eprintln!(
        "watching {}; the page reloads on every save (Ctrl-C stops)",
        watched.join(", ")
    );
    let app = Router::new()
        .route("/__tidings/events", get(events))
        .route("/", get(index))
        .route("/{*path}", get(file))
        .with_state(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let mut stop = std::pin::pin!(crate::shutdown::signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let conn = http.serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(app.clone()),
                );
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stop => break,
        }
    }
    eprintln!("stopped");
    Ok(())
}

async fn events(
    State(state): State<Arc<Watch>>,
) -> Sse<impl futures_util::Stream<Item = std::result::Result<Event, std::convert::Infallible>>> {
    let rx = state.reload.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                Some((Ok(Event::default().data("reload")), rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(stream)
}

async fn index(state: State<Arc<Watch>>) -> Response {
    file(state, UrlPath("index.html".into())).await
}

async fn file(State(state): State<Arc<Watch>>, UrlPath(path): UrlPath<String>) -> Response {
    if let Some(error) = state.error.lock().unwrap().clone() {
        return page(StatusCode::OK, &error_page(&error));
    }
    // Only plain names inside the output folder.
    let rel = Path::new(&path);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let full = state.out.join(rel);
    let Ok(bytes) = tokio::fs::read(&full).await else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let ext = full.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "html" => page(StatusCode::OK, &String::from_utf8_lossy(&bytes)),
        _ => {
            let kind = match ext {
                "png" => "image/png",
                "css" => "text/css; charset=utf-8",
                // .eml, .txt, .mjml: shown as text in the browser.
                _ => "text/plain; charset=utf-8",
            };
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                bytes,
            )
                .into_response()
        }
    }
}

/// An HTML page with the reload hook.
fn page(status: StatusCode, html: &str) -> Response {
    let body = match html.rfind("</body>") {
        Some(i) => format!("{}{RELOAD_SCRIPT}{}", &html[..i], &html[i..]),
        None => format!("{html}{RELOAD_SCRIPT}"),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn error_page(error: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Build error</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;margin:2rem;color:#222}}\
         pre{{background:#fff0f0;border:1px solid #e0a0a0;padding:1rem;white-space:pre-wrap}}</style></head>\
         <body><h1>The preview could not be built</h1><pre id=\"error\">{}</pre>\
         <p>Fix the file and save: this page reloads by itself.</p></body></html>",
        html_escape(error)
    )
}

/// The project's HTML escaping, line by line (it turns control characters,
/// newlines included, into spaces; an error's lines must stay lines).
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        crate::render::personalise::push_escaped(
            &mut out,
            line,
            crate::render::personalise::Escape::Html,
        );
    }
    out
}
