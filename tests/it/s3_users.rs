//! The users file as an object in a bucket (`[auth] users_file =
//! "s3://BUCKET/KEY"`), shared by two nodes on one SeaweedFS: what
//! `dropzone user ...` changes on either node reaches both without a
//! restart (each watches the object's ETag), changes made at once on both
//! are all kept (conditional writes), an object that no longer parses
//! leaves the users read last in force, and a node started while the
//! store is down reads the users once it is back.

use std::process::Command;

use dropzone::aws::s3::{Condition, S3Error};

use super::harness::*;
use super::seaweed::SeaweedFs;

/// A bucket of its own for the users, beside the files' bucket.
const USERS_BUCKET: &str = "dropzone-users";
/// The users object's key.
const USERS_KEY: &str = "auth/users.toml";

/// Whether `user` can log in to `srv` (and run `pwd`).
fn logs_in(srv: &Server, user: &str) -> bool {
    srv.run_any(&mut srv.sftp(user, "pwd\n")).status.success()
}

/// Waits until `user` can (`true`) or cannot log in to `srv`: a change
/// made on another node arrives at that node's next look at the object.
fn wait_until_login(srv: &Server, user: &str, can: bool) {
    let what = format!(
        "{user} {} log in",
        if can { "can" } else { "can no longer" }
    );
    srv.wait_for(&what, || (logs_in(srv, user) == can).then_some(()));
}

/// `dropzone user add NAME --authorized-key KEY.pub` on `srv`'s node.
fn user_add(srv: &Server, user: &User) -> Command {
    let public = user.key.with_extension("pub");
    srv.dropzone_tool(&[
        "user",
        "add",
        &user.name,
        "--authorized-key",
        public.to_str().unwrap(),
    ])
}

#[test]
fn nodes_share_a_users_file_in_a_bucket_and_see_each_others_changes() {
    let s3 = SeaweedFs::start();
    let users_bucket = s3.create_bucket(USERS_BUCKET);
    let mut a = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            extra_config: s3.storage_config("users-it"),
            env: SeaweedFs::env(),
            users_file: Some(format!("s3://{USERS_BUCKET}/{USERS_KEY}")),
            ..ServerOptions::default()
        },
    );
    let mut b = a.start_node();

    // `user add` wrote the object; neither node has a users file of its own.
    let (text, _) = users_bucket.get(USERS_KEY).unwrap();
    assert!(
        String::from_utf8_lossy(&text).contains("name = \"alice\""),
        "{}",
        String::from_utf8_lossy(&text)
    );
    for node in [&a, &b] {
        assert!(!node.path("config/users.toml").exists());
    }
    assert!(logs_in(&b, "alice"), "{}", b.log_tail(30));

    // Added on node B, node A lets the user in; removed on node A, node B
    // turns them away.
    let carol = b.new_user_key("carol");
    a.know_user(carol.clone());
    assert!(!logs_in(&a, "carol"));
    b.run(&mut user_add(&b, &carol));
    wait_until_login(&a, "carol", true);
    assert!(
        a.log().contains("users file reloaded"),
        "{}",
        a.log_tail(30)
    );
    a.run(&mut a.dropzone_tool(&["user", "remove", "carol"]));
    wait_until_login(&b, "carol", false);

    // Six adds at once, three on each node: every one is kept. (The store
    // refuses a write whose If-Match does not hold, or this proves little.)
    assert!(matches!(
        users_bucket.put(USERS_KEY, b"", &[], Condition::IfMatch("\"0\"".into())),
        Err(S3Error::PreconditionFailed)
    ));
    let racers: Vec<User> = (0..6)
        .map(|i| a.new_user_key(&format!("racer{i}")))
        .collect();
    let running: Vec<_> = racers
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let node = if i % 2 == 0 { &a } else { &b };
            let child = user_add(node, user)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting dropzone user add");
            (user, child)
        })
        .collect();
    for (user, child) in running {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add {} failed: {}",
            user.name,
            stderr(&out)
        );
    }
    let listed = stdout(&b.run(&mut b.dropzone_tool(&["user", "list"])));
    for user in &racers {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{}\t", user.name))),
            "{} is missing from the users file:\n{listed}",
            user.name
        );
    }
    b.know_user(racers[5].clone());
    wait_until_login(&b, "racer5", true);

    // An object that no longer parses: the nodes keep the users read last
    // and say why; `user add` refuses to write over it, naming the object.
    users_bucket
        .put(USERS_KEY, b"[[user]\nname = \n", &[], Condition::Always)
        .unwrap();
    b.wait_for("the broken users file to be reported", || {
        b.log().contains("cannot be used").then_some(())
    });
    assert!(logs_in(&b, "alice"), "{}", b.log_tail(30));
    let dave = a.new_user_key("dave");
    let out = a.run_fail(&mut user_add(&a, &dave));
    assert!(
        stderr(&out).contains(&format!("s3://{USERS_BUCKET}/{USERS_KEY}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_node_started_while_the_store_is_down_reads_the_users_once_it_is_back() {
    let mut s3 = SeaweedFs::start();
    let a = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            extra_config: s3.storage_config("users-down"),
            env: SeaweedFs::env(),
            users_file: Some(format!("s3://{}/users.toml", s3.bucket)),
            ..ServerOptions::default()
        },
    );
    assert!(logs_in(&a, "alice"), "{}", a.log_tail(30));

    // Down: node A says once that it cannot look; node B starts anyway,
    // with no users from the bucket yet.
    s3.stop();
    a.wait_for("node A to report the store down", || {
        a.log()
            .contains("users file cannot be checked for changes")
            .then_some(())
    });
    let b = a.start_node();
    assert!(
        b.log().contains("users file unreachable at start-up"),
        "{}",
        b.log_tail(30)
    );

    // Back: both find it again by themselves, and alice logs in to node B.
    s3.restart();
    a.wait_for("node A to find the store again", || {
        a.log().contains("users file reachable again").then_some(())
    });
    wait_until_login(&b, "alice", true);
    assert!(b.log().contains("users file read"), "{}", b.log_tail(30));
    assert_eq!(
        a.log().matches("users file cannot be checked").count(),
        1,
        "the outage is reported once:\n{}",
        a.log_tail(40)
    );
}
