//! `tidings serve` and `tidings archive`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::runtime;
use crate::config::Config;
use crate::deliver::unsubscribe::{Purpose, Signer};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; put the organisation's reverse proxy (TLS) in
    /// front. Port 0 picks a free port (printed on start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
}

/// `HOST:PORT` with an address or a name (`localhost:0`): names resolve
/// now, to their first address.
pub(super) fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let mut addrs = s.to_socket_addrs().map_err(|e| {
        format!("`{s}` is not an address to listen on ({e}): write HOST:PORT, e.g. 127.0.0.1:8080 or localhost:0")
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Output folder
    #[arg(long, value_name = "DIR", default_value = "out/archive")]
    pub out: PathBuf,
}

pub fn serve(config: Config, args: ServeArgs) -> Result<()> {
    // Without the secret no link can be checked: the server does not start.
    let signer = Signer::for_purpose(&config, Purpose::Serve, &mut Default::default())
        .map_err(Error::Usage)?;
    runtime()?.block_on(async move {
        let state = crate::serve::Shared::new(config, signer).await?;
        crate::serve::run(state, args.listen).await
    })
}

pub fn archive(config: &Config, args: ArchiveArgs) -> Result<()> {
    let report = runtime()?.block_on(crate::serve::archive::write_archive(config, &args.out))?;
    for l in &report.left_out {
        eprintln!("warning: {l}");
    }
    println!(
        "wrote {} issue{} to {} (index.html, feed.xml)",
        report.issues.len(),
        if report.issues.len() == 1 { "" } else { "s" },
        args.out.display()
    );
    Ok(())
}
