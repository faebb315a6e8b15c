//! The test harness of the scp parts: a user store in a temporary
//! directory and the client end of an scp session on an in-memory stream.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

use super::serve;
use crate::access::Access;
use crate::jail;
use crate::keys::DataKey;
use crate::store::storage::{LocalStorage, ObjectPath};
use crate::store::{OpenOptions, UserStore};

pub(super) struct Env {
    _dir: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) store: Arc<UserStore>,
}

pub(super) fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let storage = LocalStorage::open_root(&root).unwrap();
    let store = UserStore::new(Arc::new(storage), Arc::new(DataKey::from_bytes([7u8; 32])));
    Env {
        _dir: dir,
        root,
        store: Arc::new(store),
    }
}

pub(super) fn p(s: &str) -> ObjectPath {
    jail::resolve(s).unwrap()
}

pub(super) fn put(store: &UserStore, path: &str, data: &[u8]) {
    let opts = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    };
    let f = store.open(&p(path), opts).unwrap();
    f.write_at(0, data).unwrap();
    f.close().unwrap();
}

pub(super) fn get(store: &UserStore, path: &str) -> Vec<u8> {
    let opts = OpenOptions {
        read: true,
        ..OpenOptions::default()
    };
    let f = store.open(&p(path), opts).unwrap();
    f.read_at(0, usize::MAX >> 1).unwrap()
}

pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// Names in the on-disk root directory (staged uploads included).
pub(super) fn disk_names(root: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The client end of a session.
pub(super) struct Client {
    io: BufReader<DuplexStream>,
}

impl Client {
    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    pub(super) async fn byte(&mut self) -> u8 {
        self.io.read_u8().await.unwrap()
    }

    pub(super) async fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.io.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line.pop(), Some(b'\n'), "line not terminated: {line:?}");
        String::from_utf8(line).unwrap()
    }

    pub(super) async fn expect_ok(&mut self) {
        let b = self.byte().await;
        if b != 0 {
            let msg = self.line().await;
            panic!("expected ok, got {b} {msg:?}");
        }
    }

    /// Expects a warning (`\x01`) or fatal (`\x02`) response.
    pub(super) async fn expect_error(&mut self, code: u8) -> String {
        assert_eq!(self.byte().await, code);
        self.line().await
    }

    pub(super) async fn data(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.io.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// Uploads one file in sink mode after the initial handshake.
    pub(super) async fn upload(&mut self, name: &str, data: &[u8]) {
        self.send(format!("C0644 {} {}\n", data.len(), name).as_bytes())
            .await;
        self.expect_ok().await;
        self.send(data).await;
        self.send(b"\0").await;
        self.expect_ok().await;
    }

    /// Receives one announced file in source mode: returns its record
    /// and data.
    pub(super) async fn download(&mut self) -> (String, Vec<u8>) {
        let record = self.line().await;
        let size: usize = record.split(' ').nth(1).unwrap().parse().unwrap();
        self.send(b"\0").await;
        let data = self.data(size).await;
        self.expect_ok().await;
        self.send(b"\0").await;
        (record, data)
    }

    pub(super) async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        self.io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "unexpected trailing bytes {rest:?}");
    }
}

pub(super) fn start(store: &Arc<UserStore>, command: &str) -> (Client, JoinHandle<u32>) {
    start_with(store, command, Access::full())
}

/// [`start`] for a user with `access`.
pub(super) fn start_with(
    store: &Arc<UserStore>,
    command: &str,
    access: Access,
) -> (Client, JoinHandle<u32>) {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let store = store.clone();
    let command = command.to_owned();
    let task = tokio::spawn(async move {
        serve(
            server,
            store,
            &command,
            crate::observe::Reporter::discard(),
            access,
        )
        .await
    });
    (
        Client {
            io: BufReader::new(client),
        },
        task,
    )
}

pub(super) async fn finish(client: Client, task: JoinHandle<u32>) -> u32 {
    drop(client);
    task.await.unwrap()
}
