//! The dispatcher driven with raw SFTP packets over an in-memory stream:
//! malformed input, pipelined requests, and the reply for each.

use std::sync::Arc;

use bytes::Bytes;
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};

use super::budget::ConnectionBudget;
use super::paths::{READDIR_BATCH, READDIR_REPLY_BYTES};
use super::wire::Writer;
use super::{SftpConfig, StreamReplies, serve};
use crate::keys::DataKey;
use crate::store::UserStore;
use crate::store::storage::LocalStorage;
use crate::username::UserName;

const FXP_INIT: u8 = 1;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_STAT: u8 = 17;
const FXP_EXTENDED: u8 = 200;

struct Client {
    io: DuplexStream,
    dir: Arc<tempfile::TempDir>,
    store: Arc<UserStore>,
    config: SftpConfig,
    budget: Arc<ConnectionBudget>,
    server: tokio::task::JoinHandle<StreamReplies<WriteHalf<DuplexStream>>>,
}

impl Client {
    async fn start() -> Client {
        Client::start_with(SftpConfig::default()).await
    }

    /// A session on a store of its own, under `config`'s caps.
    async fn start_with(config: SftpConfig) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open_root(&dir.path().join("u")).unwrap();
        let store = Arc::new(UserStore::new(
            Arc::new(storage),
            Arc::new(DataKey::from_bytes([9; 32])),
        ));
        let budget = ConnectionBudget::standalone(&config);
        Client::session(Arc::new(dir), store, config, budget).await
    }

    /// Another SFTP channel of the same connection: same store, same budget.
    async fn channel(&self) -> Client {
        let (dir, store) = (self.dir.clone(), self.store.clone());
        Client::session(dir, store, self.config.clone(), self.budget.clone()).await
    }

    async fn session(
        dir: Arc<tempfile::TempDir>,
        store: Arc<UserStore>,
        config: SftpConfig,
        budget: Arc<ConnectionBudget>,
    ) -> Client {
        let (client, server_side) = tokio::io::duplex(1 << 20);
        let user = UserName::parse("u").unwrap();
        let (requests, replies) = tokio::io::split(server_side);
        let server = tokio::spawn(serve(
            requests,
            StreamReplies(replies),
            tokio::io::sink(),
            store.clone(),
            user,
            config.clone(),
            budget.clone(),
            crate::observe::Reporter::discard(),
            crate::access::Access::full(),
        ));
        let mut c = Client {
            io: client,
            dir,
            store,
            config,
            budget,
            server,
        };
        c.raw(&[FXP_INIT, 0, 0, 0, 3]).await;
        match c.reply().await {
            Packet::Version(v) => {
                assert_eq!(v.version, 3);
                assert!(v.extensions.contains_key("limits@openssh.com"));
            }
            other => panic!("expected VERSION, got {other:?}"),
        }
        c
    }

    async fn raw(&mut self, body: &[u8]) {
        self.io.write_u32(body.len() as u32).await.unwrap();
        self.io.write_all(body).await.unwrap();
    }

    async fn request(&mut self, kind: u8, payload: Writer) {
        let mut body = vec![kind];
        body.extend(payload.finish());
        self.raw(&body).await;
    }

    async fn reply(&mut self) -> Packet {
        self.sized_reply().await.1
    }

    /// The next reply and its length on the wire.
    async fn sized_reply(&mut self) -> (usize, Packet) {
        let len = self.io.read_u32().await.unwrap();
        let mut body = vec![0; len as usize];
        self.io.read_exact(&mut body).await.unwrap();
        (
            len as usize + 4,
            Packet::try_from(&mut Bytes::from(body)).unwrap(),
        )
    }

    /// OPEN or OPENDIR (`kind`) of `path`: the handle, or the status.
    async fn try_open(&mut self, kind: u8, id: u32, path: &str) -> Result<String, StatusCode> {
        let mut w = Writer::default().u32(id).bytes(path.as_bytes());
        if kind == FXP_OPEN {
            w = w.u32(WRITE | CREAT | TRUNC).u32(0);
        }
        self.request(kind, w).await;
        match self.reply().await {
            Packet::Handle(h) if h.id == id => Ok(h.handle),
            Packet::Status(s) if s.id == id => Err(s.status_code),
            other => panic!("expected HANDLE or STATUS {id}, got {other:?}"),
        }
    }

    async fn close(&mut self, id: u32, handle: &str) -> StatusCode {
        self.request(
            FXP_CLOSE,
            Writer::default().u32(id).bytes(handle.as_bytes()),
        )
        .await;
        self.status().await.1
    }

    async fn status(&mut self) -> (u32, StatusCode, String) {
        match self.reply().await {
            Packet::Status(s) => (s.id, s.status_code, s.error_message),
            other => panic!("expected STATUS, got {other:?}"),
        }
    }

    async fn open(&mut self, id: u32, path: &str, pflags: u32) -> String {
        self.request(
            FXP_OPEN,
            Writer::default()
                .u32(id)
                .bytes(path.as_bytes())
                .u32(pflags)
                .u32(0),
        )
        .await;
        match self.reply().await {
            Packet::Handle(h) if h.id == id => h.handle,
            other => panic!("expected HANDLE {id}, got {other:?}"),
        }
    }
}

const READ: u32 = 1;
const WRITE: u32 = 2;
const CREAT: u32 = 8;
const TRUNC: u32 = 0x10;

#[tokio::test]
async fn malformed_requests_get_clean_errors_and_the_session_goes_on() {
    let mut c = Client::start().await;
    // Unknown packet type with an id.
    c.raw(&[99, 0, 0, 0, 7, 1, 2]).await;
    let (id, code, _) = c.status().await;
    assert_eq!((id, code), (7, StatusCode::OpUnsupported));
    // OPEN truncated in the middle of its path string.
    c.raw(&[FXP_OPEN, 0, 0, 0, 8, 0, 0, 0, 50, b'a']).await;
    let (id, code, _) = c.status().await;
    assert_eq!((id, code), (8, StatusCode::BadMessage));
    // A NUL in a path.
    c.request(FXP_STAT, Writer::default().u32(9).bytes(b"a\0b"))
        .await;
    let (id, code, msg) = c.status().await;
    // OpenSSH's text for the code; the detail is in the server log.
    assert_eq!(
        (id, code, msg.as_str()),
        (9, StatusCode::Failure, "Failure")
    );
    // A handle that was never opened.
    c.request(
        FXP_READ,
        Writer::default().u32(10).bytes(b"nope").u64(0).u32(10),
    )
    .await;
    let (id, code, msg) = c.status().await;
    assert_eq!(
        (id, code, msg.as_str()),
        (10, StatusCode::Failure, "Failure")
    );
    // An unknown extension.
    c.request(
        FXP_EXTENDED,
        Writer::default().u32(11).bytes(b"evil@example.com"),
    )
    .await;
    let (id, code, _) = c.status().await;
    assert_eq!((id, code), (11, StatusCode::OpUnsupported));
    // Still serving.
    c.request(FXP_STAT, Writer::default().u32(12).bytes(b"/"))
        .await;
    assert!(matches!(c.reply().await, Packet::Attrs(a) if a.id == 12));
}

#[tokio::test]
async fn an_oversized_packet_ends_the_session_without_a_panic() {
    let mut c = Client::start().await;
    c.io.write_u32(64 * 1024 * 1024).await.unwrap();
    drop(c.io);
    // The server task returns its reply sink instead of panicking.
    c.server.await.unwrap();
}

#[tokio::test]
async fn pipelined_writes_and_reads_round_trip() {
    let mut c = Client::start().await;
    let h = c.open(1, "/f", WRITE | CREAT | TRUNC).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // Send every write before reading any reply, as OpenSSH's client does.
    let pieces: Vec<_> = data.chunks(32 * 1024).enumerate().collect();
    for (n, piece) in &pieces {
        let offset = (*n * 32 * 1024) as u64;
        c.request(
            FXP_WRITE,
            Writer::default()
                .u32(100 + *n as u32)
                .bytes(h.as_bytes())
                .u64(offset)
                .bytes(piece),
        )
        .await;
    }
    let mut acked: Vec<u32> = Vec::new();
    for _ in &pieces {
        let (id, code, _) = c.status().await;
        assert_eq!(code, StatusCode::Ok);
        acked.push(id);
    }
    acked.sort_unstable();
    assert_eq!(acked, (100..100 + pieces.len() as u32).collect::<Vec<_>>());
    c.request(FXP_CLOSE, Writer::default().u32(2).bytes(h.as_bytes()))
        .await;
    assert_eq!(c.status().await.1, StatusCode::Ok);

    let h = c.open(3, "/f", READ).await;
    for n in 0..10u32 {
        c.request(
            FXP_READ,
            Writer::default()
                .u32(200 + n)
                .bytes(h.as_bytes())
                .u64(u64::from(n) * 32 * 1024)
                .u32(32 * 1024),
        )
        .await;
    }
    let mut back = vec![0u8; data.len()];
    let mut eofs = 0;
    for _ in 0..10 {
        match c.reply().await {
            Packet::Data(d) => {
                let at = (d.id - 200) as usize * 32 * 1024;
                back[at..at + d.data.len()].copy_from_slice(&d.data);
            }
            Packet::Status(s) if s.status_code == StatusCode::Eof => eofs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(eofs, 0, "all ten reads lie within the 300000 bytes");
    assert_eq!(back, data);
}

#[tokio::test]
async fn readdir_lists_entries_then_eof() {
    let mut c = Client::start().await;
    for (i, name) in ["/a", "/b"].iter().enumerate() {
        let h = c.open(i as u32, name, WRITE | CREAT).await;
        c.request(FXP_CLOSE, Writer::default().u32(50).bytes(h.as_bytes()))
            .await;
        assert_eq!(c.status().await.1, StatusCode::Ok);
    }
    c.request(FXP_OPENDIR, Writer::default().u32(60).bytes(b"/"))
        .await;
    let Packet::Handle(h) = c.reply().await else {
        panic!("no handle")
    };
    c.request(
        FXP_READDIR,
        Writer::default().u32(61).bytes(h.handle.as_bytes()),
    )
    .await;
    let Packet::Name(names) = c.reply().await else {
        panic!("no names")
    };
    let mut listed: Vec<_> = names.files.iter().map(|f| f.filename.as_str()).collect();
    listed.sort_unstable();
    assert_eq!(listed, [".", "..", "a", "b"]);
    assert!(
        names
            .files
            .iter()
            .any(|f| f.longname.starts_with("-rw-r--r--"))
    );
    c.request(
        FXP_READDIR,
        Writer::default().u32(62).bytes(h.handle.as_bytes()),
    )
    .await;
    assert_eq!(c.status().await.1, StatusCode::Eof);
}

/// READs at or past the end and CLOSEs of read-only handles are answered by
/// the handle's worker without a trip to a blocking thread; the answers must
/// be the store's: EOF only for a handle that may read, a permission error
/// on a write-only one, and data again once the file has grown.
#[tokio::test]
async fn reads_at_the_end_and_read_only_closes_answer_as_the_store_does() {
    let mut c = Client::start().await;
    let new = c.open(0, "/f", WRITE | CREAT | TRUNC).await;
    c.request(FXP_CLOSE, Writer::default().u32(0).bytes(new.as_bytes()))
        .await;
    assert_eq!(c.status().await.1, StatusCode::Ok);
    // Written in place (no TRUNC), so a reader sees it grow.
    let w = c.open(1, "/f", WRITE).await;
    let write = |id: u32, offset: u64, data: &[u8]| {
        Writer::default()
            .u32(id)
            .bytes(w.as_bytes())
            .u64(offset)
            .bytes(data)
    };
    c.request(FXP_WRITE, write(2, 0, b"hello")).await;
    assert_eq!(c.status().await.1, StatusCode::Ok);
    let read = |id: u32, h: &str, offset: u64| {
        Writer::default()
            .u32(id)
            .bytes(h.as_bytes())
            .u64(offset)
            .u32(100)
    };
    c.request(FXP_READ, read(3, &w, 5)).await;
    assert_eq!(c.status().await.1, StatusCode::PermissionDenied);

    let r = c.open(4, "/f", READ).await;
    c.request(FXP_READ, read(5, &r, 5)).await;
    assert_eq!(c.status().await, (5, StatusCode::Eof, "End of file".into()));
    c.request(FXP_READ, read(6, &r, 1 << 40)).await;
    assert_eq!(c.status().await.1, StatusCode::Eof);
    // The file grows through the other handle: the same offset has data.
    c.request(FXP_WRITE, write(7, 5, b" world")).await;
    assert_eq!(c.status().await.1, StatusCode::Ok);
    c.request(FXP_READ, read(8, &r, 5)).await;
    match c.reply().await {
        Packet::Data(d) => assert_eq!((d.id, &d.data[..]), (8, &b" world"[..])),
        other => panic!("expected DATA, got {other:?}"),
    }
    for (id, h) in [(9, &r), (10, &w)] {
        c.request(FXP_CLOSE, Writer::default().u32(id).bytes(h.as_bytes()))
            .await;
        assert_eq!(c.status().await, (id, StatusCode::Ok, "Success".into()));
    }
    // A closed handle is gone, whichever way its CLOSE ran.
    c.request(FXP_READ, read(11, &r, 0)).await;
    assert_eq!(c.status().await.1, StatusCode::Failure);
}

#[tokio::test]
async fn a_close_sent_just_before_the_client_goes_still_commits_the_upload() {
    let mut c = Client::start().await;
    let h = c.open(1, "/last", WRITE | CREAT | TRUNC).await;
    // More than two runs of WRITEs (a worker runs 16 jobs at once), large
    // enough to go to a blocking thread: the CLOSE is still queued when the
    // client has gone and the replies to the WRITEs before it fail.
    let piece = 50_000usize;
    let data: Vec<u8> = (0..40 * piece as u32).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(piece).enumerate() {
        c.request(
            FXP_WRITE,
            Writer::default()
                .u32(2 + i as u32)
                .bytes(h.as_bytes())
                .u64((i * piece) as u64)
                .bytes(chunk),
        )
        .await;
    }
    c.request(FXP_CLOSE, Writer::default().u32(99).bytes(h.as_bytes()))
        .await;
    let Client {
        io, dir, server, ..
    } = c;
    drop(io);
    // The session ends only once its workers have run what was queued.
    drop(server.await.unwrap());
    let storage = LocalStorage::open_root(&dir.path().join("u")).unwrap();
    let store = UserStore::new(Arc::new(storage), Arc::new(DataKey::from_bytes([9; 32])));
    let path = crate::store::storage::ObjectPath::from_components(["last"]).unwrap();
    let read = crate::store::OpenOptions {
        read: true,
        ..Default::default()
    };
    let file = store.open(&path, read).unwrap();
    assert!(file.read_at(0, data.len() + 1).unwrap() == data);
}

/// A directory is read a batch per READDIR: every entry once, `.` and `..`
/// first, no reply over the entry or byte bound (255-byte names), the
/// store's own names hidden.
#[tokio::test]
async fn readdir_reads_a_large_directory_in_bounded_batches() {
    let mut c = Client::start().await;
    let root = c.dir.path().join("u");
    let count = 1000;
    let name = |i: usize| format!("{i:0>255}");
    for i in 0..count {
        // Not valid encrypted files: listed with size 0, which is enough here.
        std::fs::write(root.join(name(i)), b"").unwrap();
    }
    std::fs::write(root.join(".dropzone-upload-x"), b"").unwrap();
    c.request(FXP_OPENDIR, Writer::default().u32(1).bytes(b"/"))
        .await;
    let Packet::Handle(h) = c.reply().await else {
        panic!("no handle")
    };
    let mut seen = Vec::new();
    let mut replies = 0;
    for id in 2.. {
        c.request(
            FXP_READDIR,
            Writer::default().u32(id).bytes(h.handle.as_bytes()),
        )
        .await;
        match c.sized_reply().await {
            (len, Packet::Name(names)) => {
                assert!(names.files.len() <= READDIR_BATCH);
                // The entries' bytes plus the reply's header.
                assert!(len <= READDIR_REPLY_BYTES + 1024, "a reply of {len} bytes");
                seen.extend(names.files.into_iter().map(|f| f.filename));
                replies += 1;
            }
            (_, Packet::Status(s)) => {
                assert_eq!(s.status_code, StatusCode::Eof);
                break;
            }
            (_, other) => panic!("expected NAME or EOF, got {other:?}"),
        }
    }
    assert_eq!(&seen[..2], [".", ".."]);
    let mut names = seen.split_off(2);
    names.sort();
    let mut want: Vec<String> = (0..count).map(name).collect();
    want.sort();
    assert_eq!(names, want);
    // About 100 entries of this size fit in a reply: the byte bound, not
    // the entry bound, ends most replies.
    assert!(replies > count / READDIR_BATCH + 1, "{replies} replies");
}

/// The handle cap is the connection's, over all its channels; a closed
/// handle gives its place back, and so does a channel that ends.
#[tokio::test]
async fn handles_are_capped_over_the_channels_of_a_connection() {
    let config = SftpConfig {
        max_handles: 4,
        max_handles_per_user: 100,
        ..SftpConfig::default()
    };
    let mut a = Client::start_with(config).await;
    let mut b = a.channel().await;
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(a.try_open(FXP_OPEN, i, &format!("/a{i}")).await.unwrap());
    }
    let b1 = b.try_open(FXP_OPEN, 10, "/b1").await.unwrap();
    let bdir = b.try_open(FXP_OPENDIR, 11, "/").await.unwrap();
    assert_eq!(a.budget.handles(), 4);
    // Both channels are refused now, for files and directories.
    assert_eq!(
        a.try_open(FXP_OPEN, 3, "/a3").await,
        Err(StatusCode::Failure)
    );
    assert_eq!(
        b.try_open(FXP_OPENDIR, 12, "/").await,
        Err(StatusCode::Failure)
    );
    // A refused OPEN made nothing.
    let a3 = crate::store::storage::ObjectPath::from_components(["a3"]).unwrap();
    assert!(a.store.stat(&a3, false).is_err());
    assert_eq!(b.close(13, &bdir).await, StatusCode::Ok);
    let again = a.try_open(FXP_OPEN, 4, "/a4").await.unwrap();
    assert_eq!(a.budget.handles(), 4);
    // The channel b ends with its file open: its place comes back.
    let _ = b1;
    drop(b.io);
    b.server.await.unwrap();
    assert_eq!(a.budget.handles(), 3);
    assert!(a.try_open(FXP_OPENDIR, 5, "/").await.is_ok());
    assert_eq!(a.close(6, &again).await, StatusCode::Ok);
}

/// limits@openssh.com tells the client the connection's handle cap.
#[tokio::test]
async fn limits_advertise_the_configured_handle_cap() {
    let config = SftpConfig {
        max_handles: 37,
        ..SftpConfig::default()
    };
    let mut c = Client::start_with(config).await;
    c.request(
        FXP_EXTENDED,
        Writer::default().u32(1).bytes(b"limits@openssh.com"),
    )
    .await;
    let Packet::ExtendedReply(r) = c.reply().await else {
        panic!("no extended reply")
    };
    // Four u64: packet length, read length, write length, open handles.
    assert_eq!(r.data.len(), 32);
    assert_eq!(u64::from_be_bytes(r.data[24..32].try_into().unwrap()), 37);
}
