//! The encrypted store on S3 (`store::storage::S3Storage`) against a real
//! SeaweedFS, through `UserStore` as a session uses it: round trips at
//! chunk and part edges, resume, what S3 refuses (and how it says so),
//! renames, paged listings, uploads that never complete, and the sweep of
//! abandoned multipart uploads. The tests whose semantics both backends
//! share run on the local backend too.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use dropzone::aws::s3::S3Client;
use dropzone::keys::DataKey;
use dropzone::store::storage::{
    Kind, LocalStorage, ObjectPath, S3Storage, Unsupported, sweep_multipart,
};
use dropzone::store::{OpenOptions, StoreError, UserStore};
use dropzone::username::UserName;

use super::seaweed::SeaweedFs;

/// Part size for these tests: the smallest S3 allows, so that part edges
/// come early.
const PART: usize = 5 << 20;

fn key() -> Arc<DataKey> {
    Arc::new(DataKey::from_bytes([7u8; 32]))
}

fn user() -> UserName {
    UserName::parse("alice").unwrap()
}

fn p(path: &str) -> ObjectPath {
    ObjectPath::from_components(path.split('/').filter(|c| !c.is_empty())).unwrap()
}

/// A store on `s3` under `prefix`, uploading in parts of [`PART`].
fn s3_store(s3: &SeaweedFs, prefix: &str) -> UserStore {
    let storage = S3Storage::open_user_root(s3.client(), prefix, &user())
        .unwrap()
        .with_part_size(PART)
        .unwrap();
    UserStore::new(Arc::new(storage), key())
}

/// The same tree on both backends: (name, store, keeps the temp dir or
/// the SeaweedFS alive).
enum Keep {
    Local(#[allow(dead_code)] tempfile::TempDir),
    S3(#[allow(dead_code)] SeaweedFs),
}

fn both_backends() -> Vec<(&'static str, UserStore, Keep)> {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStorage::open_root(&dir.path().join("alice")).unwrap();
    let local = UserStore::new(Arc::new(local), key());
    let s3 = SeaweedFs::start();
    let remote = s3_store(&s3, "node");
    vec![
        ("local", local, Keep::Local(dir)),
        ("s3", remote, Keep::S3(s3)),
    ]
}

fn create() -> OpenOptions {
    OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    }
}

fn rw() -> OpenOptions {
    OpenOptions {
        read: true,
        write: true,
        ..OpenOptions::default()
    }
}

fn ro() -> OpenOptions {
    OpenOptions {
        read: true,
        ..OpenOptions::default()
    }
}

/// Deterministic, incompressible-looking bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads `data` as a client would: 32 KiB writes in order, then close.
fn put(store: &UserStore, path: &str, data: &[u8]) {
    let f = store.open(&p(path), create()).unwrap();
    let mut at = 0;
    for piece in data.chunks(32 << 10) {
        f.write_at(at, piece).unwrap();
        at += piece.len() as u64;
    }
    f.close().unwrap();
}

fn get(store: &UserStore, path: &str) -> Result<Vec<u8>, StoreError> {
    let f = store.open(&p(path), ro())?;
    let mut out = Vec::new();
    loop {
        let piece = f.read_at(out.len() as u64, 255 << 10)?;
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    f.close()?;
    Ok(out)
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

/// The store's own refusal of something S3 cannot do, with its message.
fn unsupported_message(e: &StoreError) -> String {
    match e {
        StoreError::Io(io) => {
            assert_eq!(io.kind(), io::ErrorKind::Unsupported, "{e}");
            io.get_ref()
                .and_then(|inner| inner.downcast_ref::<Unsupported>())
                .unwrap_or_else(|| panic!("not the store's Unsupported: {e:?}"))
                .to_string()
        }
        other => panic!("not an unsupported operation: {other:?}"),
    }
}

fn pending_uploads(client: &S3Client) -> usize {
    client.list_multipart_uploads("").unwrap().len()
}

/// Stored length of a file of `len` plaintext bytes (docs/FORMAT.md).
fn stored_len(len: usize) -> u64 {
    let n = len.div_ceil(65536).max(1) as u64;
    let last = len as u64 - (n - 1) * 65536;
    64 + (n - 1) * 65588 + 52 + last.div_ceil(16) * 16
}

#[test]
fn round_trips_at_chunk_and_part_edges_on_both_backends() {
    let sizes = [
        0,
        1,
        65535,
        65536,
        65537,
        PART - 1,
        PART + 1,
        (8 << 20) - 1,
        8 << 20,
        (8 << 20) + 1,
        20 << 20,
    ];
    for (backend, store, keep) in both_backends() {
        for (i, &len) in sizes.iter().enumerate() {
            let data = bytes(len, i as u64 + 1);
            let name = format!("f{len}");
            put(&store, &name, &data);
            assert_same(
                &get(&store, &name).unwrap(),
                &data,
                &format!("{backend} {len}"),
            );
            assert_eq!(store.stat(&p(&name), true).unwrap().size, len as u64);
        }
        if let Keep::S3(s3) = &keep {
            // One object per file, holding the encrypted bytes (never the
            // plaintext's length), and no upload left open.
            let client = s3.client();
            for &len in &sizes {
                let info = client.head(&format!("node/data/alice/f{len}")).unwrap();
                assert_eq!(info.size, stored_len(len), "stored length of {len}");
            }
            assert_eq!(pending_uploads(&client), 0);
        }
    }
}

#[test]
fn resume_appends_after_the_stored_records_on_both_backends() {
    for (backend, store, _keep) in both_backends() {
        // Large enough that the unchanged records are copied server-side,
        // and small enough that they are fetched into the upload instead.
        for (name, first, more) in [("big", 12 << 20, 3 << 20), ("small", 100_000, 50_001)] {
            let a = bytes(first, 11);
            let b = bytes(more, 12);
            put(&store, name, &a);
            let f = store.open(&p(name), rw()).unwrap();
            let mut at = first as u64;
            for piece in b.chunks(32 << 10) {
                f.write_at(at, piece).unwrap();
                at += piece.len() as u64;
            }
            f.close().unwrap();
            let want = [a, b].concat();
            assert_same(
                &get(&store, name).unwrap(),
                &want,
                &format!("{backend} {name}"),
            );
            // SETSTAT to a larger size appends zeros.
            store.set_size(&p(name), want.len() as u64 + 1000).unwrap();
            let got = get(&store, name).unwrap();
            assert_same(&got[..want.len()], &want, backend);
            assert_eq!(&got[want.len()..], &[0u8; 1000][..], "{backend}");
        }
        // Append mode writes at the end, as `put -a` does.
        let f = store
            .open(
                &p("small"),
                OpenOptions {
                    write: true,
                    append: true,
                    ..OpenOptions::default()
                },
            )
            .unwrap();
        f.write_at(0, b"tail").unwrap();
        f.close().unwrap();
        assert!(
            get(&store, "small").unwrap().ends_with(b"tail"),
            "{backend}"
        );
    }
}

#[test]
fn writes_below_the_copied_records_are_refused_as_unsupported() {
    let s3 = SeaweedFs::start();
    let store = s3_store(&s3, "");
    let data = bytes(12 << 20, 3);
    put(&store, "f", &data);

    let f = store.open(&p("f"), rw()).unwrap();
    let e = f.write_at(0, b"x").unwrap_err();
    let message = unsupported_message(&e);
    assert!(message.contains("S3"), "{message}");
    let e = f.set_len(1 << 20).unwrap_err();
    unsupported_message(&e);
    f.close().unwrap();
    assert_same(&get(&store, "f").unwrap(), &data, "unchanged");
    let e = store.set_size(&p("f"), 10).unwrap_err();
    unsupported_message(&e);

    // A file whose records all fit in one part is rewritten whole: random
    // writes and truncation work there.
    let small = bytes(300_000, 4);
    put(&store, "s", &small);
    let f = store.open(&p("s"), rw()).unwrap();
    f.write_at(10, b"0123456789").unwrap();
    f.close().unwrap();
    let mut want = small.clone();
    want[10..20].copy_from_slice(b"0123456789");
    assert_same(
        &get(&store, "s").unwrap(),
        &want,
        "random write in a small file",
    );
    store.set_size(&p("s"), 70_000).unwrap();
    assert_same(&get(&store, "s").unwrap(), &want[..70_000], "truncated");
    assert_eq!(pending_uploads(&s3.client()), 0);
}

#[test]
fn a_rewrite_is_not_stored_over_a_version_it_did_not_read() {
    let s3 = SeaweedFs::start();
    let store = s3_store(&s3, "");
    let other = s3_store(&s3, "");
    put(&store, "f", &bytes(6 << 20, 5));
    let f = store.open(&p("f"), rw()).unwrap();
    f.write_at(6 << 20, b"more").unwrap();
    // Another node replaces the file meanwhile.
    let theirs = bytes(1000, 6);
    put(&other, "f", &theirs);
    assert!(f.close().is_err(), "the rewrite must not complete");
    assert_same(
        &get(&store, "f").unwrap(),
        &theirs,
        "the other version stays",
    );
    assert_eq!(pending_uploads(&s3.client()), 0);
}

#[test]
fn an_upload_that_never_completes_leaves_the_previous_version() {
    let s3 = SeaweedFs::start();
    let client = s3.client();
    let store = s3_store(&s3, "p");
    let v1 = bytes(70_000, 8);
    put(&store, "f", &v1);

    // Interrupted after several parts were sent: nothing shows, the old
    // version stays.
    let f = store.open(&p("f"), create()).unwrap();
    let v2 = bytes(16 << 20, 9);
    for (i, piece) in v2.chunks(32 << 10).enumerate() {
        f.write_at((i * (32 << 10)) as u64, piece).unwrap();
    }
    assert!(pending_uploads(&client) >= 1, "parts were sent");
    assert_eq!(store.stat(&p("f"), true).unwrap().size, v1.len() as u64);
    assert_same(&get(&store, "f").unwrap(), &v1, "during the upload");
    f.abort();
    drop(f);
    assert_same(&get(&store, "f").unwrap(), &v1, "after the abort");
    assert_eq!(pending_uploads(&client), 0, "aborted");

    // A new file never closed does not appear at all; what a killed node
    // leaves is what the sweep removes (a leaked handle stands for it).
    let g = store.open(&p("new"), create()).unwrap();
    for (i, piece) in v2.chunks(32 << 10).enumerate() {
        g.write_at((i * (32 << 10)) as u64, piece).unwrap();
    }
    assert!(store.stat(&p("new"), true).unwrap_err().is_not_found());
    std::mem::forget(g);
    assert!(pending_uploads(&client) >= 1);
    // Younger than the threshold: kept; older: aborted.
    assert_eq!(
        sweep_multipart(&client, "p", Duration::from_secs(3600)).unwrap(),
        0
    );
    assert!(sweep_multipart(&client, "p", Duration::ZERO).unwrap() >= 1);
    assert_eq!(pending_uploads(&client), 0);
    assert!(store.stat(&p("new"), true).unwrap_err().is_not_found());
}

#[test]
fn renames_copy_files_and_empty_directories_and_refuse_the_rest() {
    let s3 = SeaweedFs::start();
    let store = s3_store(&s3, "");
    let a = bytes(200_000, 10);
    put(&store, "a", &a);
    put(&store, "b", b"bee");
    assert!(matches!(
        store.rename(&p("a"), &p("b"), false),
        Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists
    ));
    store.rename(&p("a"), &p("c"), false).unwrap();
    assert!(store.stat(&p("a"), true).unwrap_err().is_not_found());
    assert_same(&get(&store, "c").unwrap(), &a, "renamed");
    store.rename(&p("c"), &p("b"), true).unwrap();
    assert_same(&get(&store, "b").unwrap(), &a, "renamed over");

    store.mkdir(&p("d"), None).unwrap();
    store.rename(&p("d"), &p("e"), false).unwrap();
    assert_eq!(store.stat(&p("e"), true).unwrap().kind, Kind::Dir);
    assert!(store.stat(&p("d"), true).unwrap_err().is_not_found());
    store.rename(&p("b"), &p("e/b"), false).unwrap();
    assert_same(&get(&store, "e/b").unwrap(), &a, "moved into a directory");
    let e = store.rename(&p("e"), &p("f"), false).unwrap_err();
    assert!(unsupported_message(&e).contains("not empty"));

    // No links on S3: refused with a reason.
    let e = store.symlink("b", &p("link")).unwrap_err();
    assert!(unsupported_message(&e).contains("symbolic links"));
    let e = store.hard_link(&p("e/b"), &p("hard")).unwrap_err();
    assert!(unsupported_message(&e).contains("hard links"));
    unsupported_message(&store.read_link(&p("e/b")).unwrap_err());
}

#[test]
fn directories_behave_as_on_a_filesystem_on_both_backends() {
    for (backend, store, _keep) in both_backends() {
        store.mkdir(&p("d"), Some(0o750)).unwrap();
        let e = store.mkdir(&p("d"), None).unwrap_err();
        assert!(
            matches!(&e, StoreError::Io(e) if e.kind() == io::ErrorKind::AlreadyExists),
            "{backend}: {e}"
        );
        let attrs = store.stat(&p("d"), true).unwrap();
        // SeaweedFS keeps no metadata on keys ending in '/' (AWS S3 does):
        // its directories show the default mode, and a chmod of one
        // succeeds without changing what is shown.
        let dir_mode = if backend == "s3" { 0o755 } else { 0o750 };
        assert_eq!(
            (attrs.kind, attrs.permissions & 0o777),
            (Kind::Dir, dir_mode),
            "{backend}"
        );
        store.set_permissions(&p("d"), 0o700).unwrap();
        put(&store, "d/f", b"x");
        assert!(store.rmdir(&p("d")).is_err(), "{backend}: not empty");
        assert!(store.open(&p("d"), ro()).is_err(), "{backend}: a directory");
        assert!(
            store
                .open(&p("missing/f"), create())
                .err()
                .is_some_and(|e| e.is_not_found()),
            "{backend}"
        );
        store.set_permissions(&p("d/f"), 0o600).unwrap();
        store
            .set_times(&p("d/f"), 1_000_000, 1_234_567_890)
            .unwrap();
        let attrs = store.stat(&p("d/f"), true).unwrap();
        assert_eq!(
            (attrs.permissions & 0o777, attrs.mtime, attrs.size),
            (0o600, 1_234_567_890, 1),
            "{backend}"
        );
        store.remove(&p("d/f")).unwrap();
        assert!(
            store.remove(&p("d/f")).unwrap_err().is_not_found(),
            "{backend}"
        );
        store.rmdir(&p("d")).unwrap();
        assert!(
            store.stat(&p("d"), true).unwrap_err().is_not_found(),
            "{backend}"
        );
    }
}

#[test]
fn a_thousand_files_list_in_pages_with_their_sizes() {
    let s3 = SeaweedFs::start();
    let store = s3_store(&s3, "");
    store.mkdir(&p("many"), None).unwrap();
    store.mkdir(&p("many/sub"), None).unwrap();
    for i in 0..1000 {
        put(&store, &format!("many/f{i:04}"), &vec![b'x'; i % 300]);
    }
    let mut stream = store.open_dir(&p("many")).unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = stream.next_batch(128).unwrap();
        assert!(batch.len() <= 128);
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    assert_eq!(seen.len(), 1001, "1000 files and one directory");
    let mut names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 1001, "no name twice");
    for (name, attrs) in &seen {
        match name.strip_prefix('f') {
            Some(n) => {
                let i: usize = n.parse().unwrap();
                assert_eq!(
                    (attrs.kind, attrs.size),
                    (Kind::File, (i % 300) as u64),
                    "{name}"
                );
            }
            None => assert_eq!((name.as_str(), attrs.kind), ("sub", Kind::Dir)),
        }
    }
    // The whole listing, sorted, as scp and the offline check read it.
    let all = store.read_dir(&p("many")).unwrap();
    assert_eq!(all.len(), 1001);
    assert_eq!(all[0].0, "f0000");
}
