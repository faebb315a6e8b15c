//! Feeds arbitrary bytes as a stream of SFTP requests to the real dispatcher
//! (`dropzone::sftp::serve`) over an in-memory stream, with a real
//! `UserStore` in a fresh temporary directory.
//!
//! Input: a sequence of frames, each a 2-byte big-endian length and that many
//! bytes of packet body (type, id, payload; cut short at the end of the
//! input). The frame length is the fuzzer's, not the wire's: the target
//! writes each body with a correct 4-byte length, so the fuzzer spends its
//! time on requests rather than framing (`sftp::tests` covers bad framing).
//!
//! Checked for every input:
//! - no panic, and the session ends when the client closes its side;
//! - every reply parses as an SFTP packet of a server-to-client type;
//! - exactly one reply per request, with an id some request carried;
//! - nothing outside the user's root changes: the temporary directory holds
//!   the root and a decoy directory, whose plaintext file must stay as it
//!   was and must never appear in a reply.
#![no_main]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use dropzone::keys::DataKey;
use dropzone::observe::Reporter;
use dropzone::sftp::budget::ConnectionBudget;
use dropzone::sftp::{SftpConfig, StreamReplies, serve};
use dropzone::store::UserStore;
use dropzone::store::storage::LocalStorage;
use dropzone::username::UserName;
use libfuzzer_sys::fuzz_target;
use russh_sftp::protocol::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest file this process may write. The store has no sparse files: a
/// WRITE, copy-data or SETSTAT far past the end stores encrypted zeros for
/// the whole gap (up to `store::file::MAX_FILE_SIZE`, 1 TiB), which the
/// fuzzer finds at once and which would fill the disk (docs/FUZZING.md,
/// findings). Past this limit writes fail with EFBIG, which also exercises
/// the store's handling of a full disk.
const MAX_WRITTEN_FILE: u64 = 16 * 1024 * 1024;

/// One runtime for all inputs: starting one per input would dominate the
/// time. Two workers, so a blocked worker cannot hide a missing reply.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    limit_file_size();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// A fixed data key: the store only needs an unwrapped key, so no key
/// service (and no RSA key generation) is involved.
static KEY: LazyLock<Arc<DataKey>> = LazyLock::new(|| Arc::new(DataKey::from_bytes([7; 32])));

const DECOY: &[u8] = b"DECOY-PLAINTEXT-outside-the-user-root";

fuzz_target!(|data: &[u8]| {
    let requests = frames(data);
    if requests.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("decoy dir");
    std::fs::write(outside.join("secret"), DECOY).expect("decoy file");
    let root = dir.path().join("u");
    let storage = LocalStorage::open_root(&root).expect("user root");
    let store = Arc::new(UserStore::new(Arc::new(storage), KEY.clone()));
    let user = UserName::parse("u").expect("user name");

    let replies = RUNTIME.block_on(session(store, user, &requests));

    check_replies(&requests, &replies);
    check_outside(dir.path(), &outside);
});

/// Caps the size of every file written (RLIMIT_FSIZE), with SIGXFSZ
/// ignored so that the write fails instead of the process dying.
fn limit_file_size() {
    let limit = libc::rlimit {
        rlim_cur: MAX_WRITTEN_FILE,
        rlim_max: MAX_WRITTEN_FILE,
    };
    // SAFETY: plain libc calls with a valid struct; nothing else in the
    // process handles SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0, "setrlimit");
    }
}

/// Splits the input into packet bodies; empty ones are skipped (the wire
/// forbids them and the server would end the session).
fn frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        if len > 0 {
            out.push(rest[..len].to_vec());
        }
        data = &rest[len..];
    }
    out
}

/// Runs one session: writes every request, closes the client's side, and
/// returns every reply body the server wrote before it ended.
async fn session(store: Arc<UserStore>, user: UserName, requests: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let (client, server_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        // Dropping the returned reply half (the request half is dropped
        // inside) closes the client's read side.
        let (requests, replies) = tokio::io::split(server_side);
        drop(
            serve(
                requests,
                StreamReplies(replies),
                tokio::io::sink(),
                store,
                user,
                SftpConfig::default(),
                ConnectionBudget::standalone(&SftpConfig::default()),
                // Events go to a private registry: no audit log.
                Reporter::discard(),
                dropzone::access::Access::full(),
            )
            .await,
        );
    });
    let (mut rx, mut tx) = tokio::io::split(client);
    // Read concurrently: the server stops reading when its replies back up.
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        rx.read_to_end(&mut all).await.expect("reading replies");
        all
    });
    for body in requests {
        let len = u32::try_from(body.len()).expect("frame fits in u32");
        tx.write_all(&len.to_be_bytes())
            .await
            .expect("writing a request");
        tx.write_all(body).await.expect("writing a request");
    }
    tx.shutdown().await.expect("closing the client side");
    drop(tx);
    server.await.expect("the server task panicked");
    let all = reader.await.expect("the reader task panicked");
    split_replies(&all)
}

fn split_replies(mut all: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !all.is_empty() {
        let (len, rest) = all
            .split_first_chunk::<4>()
            .expect("a reply's length is cut short");
        let len = u32::from_be_bytes(*len) as usize;
        assert!(
            len > 0 && len <= rest.len(),
            "reply length {len} past the end"
        );
        out.push(rest[..len].to_vec());
        all = &rest[len..];
    }
    out
}

fn check_replies(requests: &[Vec<u8>], replies: &[Vec<u8>]) {
    assert_eq!(replies.len(), requests.len(), "one reply per request");
    // The id the server can read from a request: bytes 1-4, else 0; 0 also
    // for server-to-client packet types sent by the client, which carry
    // no request id.
    let mut ids: HashSet<u32> = requests
        .iter()
        .map(|r| match r.get(1..5) {
            Some(id) => u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
            None => 0,
        })
        .collect();
    ids.insert(0);
    for body in replies {
        assert!(
            !body.windows(DECOY.len()).any(|w| w == DECOY),
            "a reply carries the decoy file's plaintext"
        );
        let packet = Packet::try_from(&mut Bytes::copy_from_slice(body))
            .unwrap_or_else(|e| panic!("unparseable reply {body:?}: {e}"));
        let id = match &packet {
            Packet::Version(_) => continue,
            Packet::Status(s) => s.id,
            Packet::Handle(h) => h.id,
            Packet::Data(d) => d.id,
            Packet::Name(n) => n.id,
            Packet::Attrs(a) => a.id,
            Packet::ExtendedReply(e) => e.id,
            other => panic!("a client-to-server packet as reply: {other:?}"),
        };
        assert!(ids.contains(&id), "reply id {id} matches no request");
    }
}

/// Only the user's root and the decoy directory exist, and the decoy is
/// untouched.
fn check_outside(tmp: &Path, outside: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(tmp)
        .expect("listing the temp dir")
        .map(|e| e.expect("temp dir entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "u"],
        "something was created beside the root"
    );
    let decoy: Vec<_> = std::fs::read_dir(outside)
        .expect("listing the decoy dir")
        .map(|e| e.expect("decoy entry").file_name())
        .collect();
    assert_eq!(decoy, ["secret"], "the decoy dir changed");
    let meta = std::fs::symlink_metadata(outside.join("secret")).expect("decoy file");
    assert!(meta.is_file(), "the decoy file was replaced");
    assert_eq!(std::fs::read(outside.join("secret")).expect("decoy"), DECOY);
}
