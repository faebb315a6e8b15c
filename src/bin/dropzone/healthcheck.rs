//! `dropzone healthcheck`: the container health check (an SSH banner probe,
//! [`dropzone::ssh::probe`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use dropzone::ssh::probe::check_ssh_banner;

use crate::setup::{ConfigArg, load_config};

/// Check that the server answers with an SSH identification line (for
/// container health checks): exit 0 if it does, 1 (saying why) if not.
#[derive(clap::Args)]
pub struct Args {
    /// Where to connect (default: the configured listen address, with
    /// 0.0.0.0 or :: replaced by the loopback address).
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// Give up after this many seconds (connecting and reading together).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(flatten)]
    config: ConfigArg,
}

/// `--timeout SECS`: a positive number of seconds (fractions allowed).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
        }
        _ => Err(format!("{s:?}: expected a positive number of seconds")),
    }
}

/// `dropzone healthcheck`: connects, reads the server's identification line
/// and checks that it is SSH 2.0. Every failure (configuration included)
/// exits 1, which container engines read as "unhealthy".
pub fn run(args: Args) -> ExitCode {
    match check(&args) {
        Ok((addr, banner)) => {
            println!("ok: {addr}: {banner}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("dropzone healthcheck: {why:#}");
            ExitCode::from(1)
        }
    }
}

/// The address checked and the identification line it sent.
fn check(args: &Args) -> anyhow::Result<(SocketAddr, String)> {
    // One deadline from the start: resolving the address counts too.
    let deadline = Instant::now() + args.timeout;
    let targets = targets(args.address.as_deref(), &args.config)?;
    if targets.is_empty() {
        anyhow::bail!(
            "--address {}: resolves to no address",
            args.address.as_deref().unwrap_or("")
        );
    }
    Ok(check_ssh_banner(&targets, deadline, args.timeout)?)
}

/// `--address`'s addresses, or else the configured listen address with an
/// unspecified IP replaced by the loopback address.
fn targets(address: Option<&str>, config: &ConfigArg) -> anyhow::Result<Vec<SocketAddr>> {
    Ok(match address {
        Some(a) => a
            .to_socket_addrs()
            .with_context(|| format!("--address {a:?}: cannot resolve (expected HOST:PORT)"))?
            .collect(),
        None => {
            let mut listen = load_config(config)?.listen;
            match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => listen.set_ip(Ipv4Addr::LOCALHOST.into()),
                IpAddr::V6(ip) if ip.is_unspecified() => listen.set_ip(Ipv6Addr::LOCALHOST.into()),
                _ => {}
            }
            vec![listen]
        }
    })
}
