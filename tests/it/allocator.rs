//! The server's allocator: jemalloc as the process's `malloc`, configured
//! by the operator through `MALLOC_CONF` or by the server itself.

use super::harness::{Server, ServerOptions};

fn start_with_env(env: &[(&str, &str)]) -> Server {
    Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ServerOptions::default()
        },
    )
}

/// The server's log once it has said which allocator settings it runs with.
fn start_up_log(server: &Server) -> String {
    server.wait_for("the allocator's start-up line", || {
        let log = server.log();
        log.contains("memory allocator").then_some(log)
    })
}

#[test]
fn malloc_conf_reaches_jemalloc_and_replaces_the_servers_own_settings() {
    // jemalloc reads MALLOC_CONF only when it is the unprefixed malloc; the
    // start-up line reports what jemalloc itself runs with.
    let server = start_with_env(&[("MALLOC_CONF", "narenas:3,dirty_decay_ms:2500")]);
    let log = start_up_log(&server);
    assert!(
        log.contains("allocator settings taken from MALLOC_CONF"),
        "{log}"
    );
    assert!(
        log.contains("jemalloc, 3 arenas, freed pages kept 2500 ms, background threads off"),
        "{log}"
    );
}

#[test]
fn without_settings_the_server_returns_freed_pages_after_a_second() {
    let server = start_with_env(&[]);
    let log = start_up_log(&server);
    assert!(
        log.contains("freed pages kept 1000 ms, background threads on"),
        "{log}"
    );
    assert!(!log.contains("settings taken from"), "{log}");
}

#[test]
fn the_prefixed_variable_is_named_as_ignored() {
    let server = start_with_env(&[("_RJEM_MALLOC_CONF", "narenas:3")]);
    let log = start_up_log(&server);
    assert!(
        log.contains("_RJEM_MALLOC_CONF is not read by this build; set MALLOC_CONF instead"),
        "{log}"
    );
    assert!(!log.contains(" 3 arenas"), "{log}");
    assert!(
        log.contains("freed pages kept 1000 ms, background threads on"),
        "{log}"
    );
}
