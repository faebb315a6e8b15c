//! Many sessions at once, as backup and sync tools open them (one per
//! worker), and the cap on session channels per connection.

use std::process::Command;
use std::thread;

use super::harness::*;
use super::raw_sftp::{FXP_ATTRS, FXP_STAT, Req};

/// Starts `count` OpenSSH sftp sessions of alice at once, from one address,
/// each uploading and listing a small file of its own; every one must
/// succeed.
fn burst(srv: &Server, count: usize) {
    let file = srv.local_path("small.txt");
    std::fs::write(&file, b"one of many workers\n").unwrap();
    let outcomes: Vec<(usize, Command, std::process::Output)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..count)
            .map(|i| {
                scope.spawn(move || {
                    let mut cmd =
                        srv.sftp("alice", &format!("put small.txt w{i}.txt\nls w{i}.txt\n"));
                    let out = output_with_timeout(&mut cmd, None);
                    (i, cmd, out)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, _, out)| !out.status.success())
        .map(|(i, cmd, out)| describe(&format!("worker {i}"), cmd, out))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {count} sessions failed; the first:\n{}\nserver log:\n{}",
        failed.len(),
        failed[0],
        srv.log_tail(30)
    );
    for i in 0..count {
        assert!(srv.data("alice").join(format!("w{i}.txt")).is_file());
    }
}

#[test]
fn fifty_then_two_hundred_sessions_of_one_user_at_once_all_succeed() {
    // Default limits: the per-source startup cap (10) makes the rest wait
    // for a place instead of closing them, and the per-user session cap
    // (256) takes them all.
    let srv = Server::start();
    burst(&srv, 50);
    burst(&srv, 200);
    assert!(
        !srv.log().contains("connection refused"),
        "{}",
        srv.log_tail(30)
    );
}

/// Whether `ssh` (through a control master) reports that the server
/// refused to open its channel.
fn refused(out: &std::process::Output) -> bool {
    stderr(out).contains("Session open refused by peer")
}

#[test]
fn session_channels_per_connection_are_capped() {
    let srv = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            extra_config: "[limits]\nmax_channels_per_connection = 3\n".into(),
            ..ServerOptions::default()
        },
    );
    let master = srv.ssh_master("alice");
    let mut open: Vec<_> = (0..3).map(|_| master.raw_sftp()).collect();
    // The fourth channel is refused by the server; the connection and its
    // other channels go on.
    let (cmd, out) = master.try_channel();
    assert!(
        refused(&out),
        "{}",
        describe("a fourth channel", &cmd, &out)
    );
    for raw in &mut open {
        let reply = raw.request(Req::new(FXP_STAT).string("/"));
        assert_eq!(reply.kind, FXP_ATTRS, "stat failed: {reply:?}");
    }
    // A channel closed by the client gives its place back.
    drop(open.pop());
    srv.wait_for("a channel's place to come back", || {
        let (_, out) = master.try_channel();
        (!refused(&out)).then_some(())
    });
    let reply = open[0].request(Req::new(FXP_STAT).string("/"));
    assert_eq!(reply.kind, FXP_ATTRS, "stat after: {reply:?}");
    // Sessions that end the ordinary way (the client's EOF, then the
    // server closes the channel first) give their places back too: more
    // sessions in a row than the cap, on the one connection.
    for i in 0..6 {
        let (cmd, out) = master.sftp("ls /\n");
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("session {i} in a row"), &cmd, &out)
        );
    }
}
