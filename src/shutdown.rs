//! The stop signal every long-running command (send, serve, preview
//! --watch) listens for. A leaf module, so the serve stage need not import
//! the CLI.

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
