//! `dropzone healthcheck`: the SSH banner check container health checks
//! run. Against a real server, a closed port, a listener that is not SSH
//! and one that never answers.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{BIN, Server, describe, output_with_timeout, stderr, stdout};

/// `dropzone healthcheck ARGS...` in `dir`, with no inherited overrides.
fn healthcheck_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("DROPZONE_CONFIG")
        .env_remove("DROPZONE_LISTEN")
        .arg("healthcheck")
        .args(args);
    cmd
}

/// Runs `dropzone healthcheck ARGS...` in `dir`.
fn healthcheck(dir: &Path, args: &[&str]) -> (Command, Output) {
    let mut cmd = healthcheck_command(dir, args);
    let out = output_with_timeout(&mut cmd, None);
    (cmd, out)
}

/// Asserts exit status 1 and that standard error contains `why`.
#[track_caller]
fn assert_unhealthy(cmd: &Command, out: &Output, why: &str) {
    assert!(
        out.status.code() == Some(1) && stderr(out).contains(why),
        "{}",
        describe(
            &format!("expected exit status 1 and {why:?} on stderr"),
            cmd,
            out
        )
    );
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_running_server_is_healthy() {
    let mut server = Server::start();
    let address = format!("127.0.0.1:{}", server.port);
    let (cmd, out) = healthcheck(server.root(), &["--address", &address]);
    server.check(out.status.success(), "healthcheck failed", &cmd, &out);
    server.check(
        stdout(&out).starts_with(&format!("ok: {address}: SSH-2.0-")),
        "healthcheck printed no `ok: ADDR: SSH-2.0-...` line",
        &cmd,
        &out,
    );
    // Repeated checks leave the server running and serving.
    for _ in 0..5 {
        let (cmd, out) = healthcheck(server.root(), &["--address", &address]);
        server.check(
            out.status.success(),
            "repeated healthcheck failed",
            &cmd,
            &out,
        );
    }
    assert!(server.is_alive(), "the server died after health checks");
    let mut sftp = server.sftp("alice", "ls\n");
    server.run(&mut sftp);
}

#[test]
fn the_default_address_is_the_configured_one() {
    let server = Server::start();
    let port = server.port;
    // The harness listens on 127.0.0.1:0; a config that says 0.0.0.0:PORT
    // is checked on 127.0.0.1:PORT.
    let config = server.path("config/healthcheck.toml");
    std::fs::write(&config, format!("listen = \"0.0.0.0:{port}\"\n")).unwrap();
    let (cmd, out) = healthcheck(server.root(), &["--config", "config/healthcheck.toml"]);
    server.check(
        out.status.success(),
        "healthcheck with --config failed",
        &cmd,
        &out,
    );
    server.check(
        stdout(&out).contains(&format!("127.0.0.1:{port}")),
        "0.0.0.0 was not replaced by 127.0.0.1",
        &cmd,
        &out,
    );

    // DROPZONE_CONFIG names the file; DROPZONE_LISTEN overrides its address.
    let mut cmd = healthcheck_command(server.root(), &[]);
    cmd.env("DROPZONE_CONFIG", &config)
        .env("DROPZONE_LISTEN", format!("0.0.0.0:{}", closed_port()));
    let out = output_with_timeout(&mut cmd, None);
    assert_unhealthy(&cmd, &out, "cannot connect");

    let mut cmd = healthcheck_command(server.root(), &[]);
    cmd.env("DROPZONE_CONFIG", &config)
        .env("DROPZONE_LISTEN", format!("127.0.0.1:{port}"));
    let out = output_with_timeout(&mut cmd, None);
    server.check(
        out.status.success(),
        "healthcheck with DROPZONE_CONFIG and DROPZONE_LISTEN failed",
        &cmd,
        &out,
    );
}

#[test]
fn a_closed_port_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", closed_port());
    let (cmd, out) = healthcheck(dir.path(), &["--address", &address]);
    assert_unhealthy(&cmd, &out, "cannot connect");
    assert_unhealthy(&cmd, &out, &address);
}

#[test]
fn a_server_that_is_not_ssh_is_unhealthy() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n");
            // Keep the connection open: the check must not wait for more.
            thread::sleep(Duration::from_secs(3));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (cmd, out) = healthcheck(dir.path(), &["--address", &address, "--timeout", "20"]);
    assert_unhealthy(&cmd, &out, "not an SSH 2.0 server");
    assert_unhealthy(&cmd, &out, "HTTP/1.0 200 OK");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the check waited for more than the first line"
    );
    serving.join().unwrap();
}

#[test]
fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = thread::spawn(move || {
        // Accept and never write.
        if let Ok((_stream, _)) = listener.accept() {
            thread::sleep(Duration::from_secs(3));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (cmd, out) = healthcheck(dir.path(), &["--address", &address, "--timeout", "0.5"]);
    assert_unhealthy(&cmd, &out, "timed out");
    serving.join().unwrap();
}

#[test]
fn a_connection_closed_at_once_is_unhealthy() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = thread::spawn(move || {
        let _ = listener.accept();
    });
    let dir = tempfile::tempdir().unwrap();
    let (cmd, out) = healthcheck(dir.path(), &["--address", &address]);
    assert_unhealthy(&cmd, &out, "closed without an SSH identification");
    serving.join().unwrap();
}

#[test]
fn a_missing_config_is_unhealthy_not_a_config_error() {
    // Container engines read exit status 1 as unhealthy; 2 is reserved.
    let dir = tempfile::tempdir().unwrap();
    let (cmd, out) = healthcheck(dir.path(), &["--config", "no-such.toml"]);
    assert_unhealthy(&cmd, &out, "no-such.toml");
}
