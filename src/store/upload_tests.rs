//! The upload gate at close: what it sees, and that a rejection stores
//! nothing, for new files, truncations, in-place writes, appends and
//! setstat size (copy-on-open).

use std::io::Read;
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use super::format;
use super::storage::{LocalStorage, ObjectPath};
use super::{OpenOptions, Rejection, StoreError, Upload, UploadGate, UserStore};
use crate::keys::DataKey;

/// Rejects any upload whose plaintext contains `bad`; records what it saw.
struct Gate {
    checks: bool,
    bad: &'static [u8],
    seen: Mutex<Vec<(String, u64, Vec<u8>)>>,
    committed: Mutex<Vec<(String, u64)>>,
}

impl Gate {
    fn new(checks: bool) -> Arc<Self> {
        Arc::new(Gate {
            checks,
            bad: b"EICAR",
            seen: Mutex::new(Vec::new()),
            committed: Mutex::new(Vec::new()),
        })
    }
    fn seen(&self) -> Vec<(String, u64, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
    fn committed(&self) -> Vec<(String, u64)> {
        self.committed.lock().unwrap().clone()
    }
}

impl UploadGate for Gate {
    fn checks(&self) -> bool {
        self.checks
    }
    fn check(&self, upload: Upload<'_>, content: &mut dyn Read) -> Result<(), Rejection> {
        let mut all = Vec::new();
        content.read_to_end(&mut all).unwrap();
        let bad = all.windows(self.bad.len()).any(|w| w == self.bad);
        self.seen
            .lock()
            .unwrap()
            .push((upload.path.to_client_string(), upload.size, all));
        if bad {
            Err(Rejection {
                reason: "EICAR found".into(),
            })
        } else {
            Ok(())
        }
    }
    fn committed(&self, upload: Upload<'_>) {
        self.committed
            .lock()
            .unwrap()
            .push((upload.path.to_client_string(), upload.size));
    }
}

fn store(dir: &TempDir, gate: Option<Arc<Gate>>) -> UserStore {
    let storage = LocalStorage::open_root(dir.path()).unwrap();
    let s = UserStore::new(Arc::new(storage), Arc::new(DataKey::from_bytes([9u8; 32])));
    match gate {
        Some(g) => s.with_gate(g),
        None => s,
    }
}

fn p(name: &str) -> ObjectPath {
    ObjectPath::from_components([name]).unwrap()
}

const NEW: OpenOptions = OpenOptions {
    read: false,
    write: true,
    append: false,
    create: true,
    truncate: true,
    exclusive: false,
    mode: None,
};

const IN_PLACE: OpenOptions = OpenOptions {
    read: true,
    write: true,
    append: false,
    create: false,
    truncate: false,
    exclusive: false,
    mode: None,
};

fn put(s: &UserStore, name: &str, data: &[u8]) -> Result<(), StoreError> {
    let f = s.open(&p(name), NEW)?;
    f.write_at(0, data)?;
    f.close()
}

fn get(s: &UserStore, name: &str) -> Vec<u8> {
    let f = s
        .open(
            &p(name),
            OpenOptions {
                read: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
    let mut out = Vec::new();
    loop {
        let got = f.read_at(out.len() as u64, 100_000).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend_from_slice(&got);
    }
}

fn rejected(r: Result<(), StoreError>) -> String {
    match r {
        Err(StoreError::Rejected { reason }) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_clean_upload_is_checked_whole_then_committed_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    // Several chunks, so the reader crosses chunk boundaries.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    put(&s, "clean.bin", &data).unwrap();
    assert_eq!(get(&s, "clean.bin"), data);
    let seen = gate.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/clean.bin");
    assert_eq!(seen[0].1, data.len() as u64);
    assert_eq!(seen[0].2, data);
    assert_eq!(
        gate.committed(),
        vec![("/clean.bin".into(), data.len() as u64)]
    );
}

#[test]
fn a_rejected_new_file_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    let reason = rejected(put(&s, "virus.com", b"X5O!P%@AP EICAR test"));
    assert_eq!(reason, "EICAR found");
    assert!(s.stat(&p("virus.com"), true).unwrap_err().is_not_found());
    assert!(gate.committed().is_empty());
    // No staged leftovers either.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_rejected_replacement_keeps_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    put(&s, "doc.txt", b"version one").unwrap();
    rejected(put(&s, "doc.txt", b"EICAR version two"));
    assert_eq!(get(&s, "doc.txt"), b"version one");
}

#[test]
fn in_place_writes_go_through_a_checked_copy() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    let original: Vec<u8> = vec![b'a'; 150_000];
    put(&s, "big", &original).unwrap();

    let header = || std::fs::read(dir.path().join("big")).unwrap()[..format::HEADER_LEN].to_vec();
    let old_header = header();
    // A clean in-place write: invisible until close, then stored whole.
    let f = s.open(&p("big"), IN_PLACE).unwrap();
    f.write_at(70_000, b"hello").unwrap();
    assert_eq!(
        get(&s, "big"),
        original,
        "the live file changed before close"
    );
    f.close().unwrap();
    let mut want = original.clone();
    want[70_000..70_005].copy_from_slice(b"hello");
    assert_eq!(get(&s, "big"), want);
    assert_eq!(gate.seen().last().unwrap().2, want);
    // The copy was re-encrypted under a new file id.
    assert_ne!(header(), old_header);

    // A rejected one leaves the stored file as it was.
    let f = s.open(&p("big"), IN_PLACE).unwrap();
    f.write_at(1, b"EICAR").unwrap();
    assert_eq!(rejected(f.close()), "EICAR found");
    assert_eq!(get(&s, "big"), want);
}

#[test]
fn appends_are_checked_with_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    put(&s, "log", b"EIC").unwrap();
    let append = OpenOptions {
        write: true,
        append: true,
        ..OpenOptions::default()
    };
    // The signature is split across the old content and the append.
    let f = s.open(&p("log"), append).unwrap();
    f.write_at(0, b"AR").unwrap();
    rejected(f.close());
    assert_eq!(get(&s, "log"), b"EIC");
    let f = s.open(&p("log"), append).unwrap();
    f.write_at(0, b"!!").unwrap();
    f.close().unwrap();
    assert_eq!(get(&s, "log"), b"EIC!!");
}

#[test]
fn an_unchanged_read_write_open_is_neither_checked_nor_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    put(&s, "f", b"data").unwrap();
    let before = std::fs::metadata(dir.path().join("f")).unwrap();
    let f = s.open(&p("f"), IN_PLACE).unwrap();
    assert_eq!(f.read_at(0, 10).unwrap(), b"data");
    f.set_permissions(0o600).unwrap();
    f.close().unwrap();
    assert_eq!(gate.seen().len(), 1, "only the first upload was checked");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let after = std::fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!(before.ino(), after.ino(), "the file was replaced");
    assert_eq!(after.permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn an_unchanged_copy_does_not_undo_a_chmod_made_meanwhile() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Some(Gate::new(true)));
    put(&s, "f", b"data").unwrap();
    let f = s.open(&p("f"), IN_PLACE).unwrap();
    s.set_permissions(&p("f"), 0o600).unwrap();
    f.close().unwrap();
    let mode = std::fs::metadata(dir.path().join("f"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the mode seen at open came back");
}

#[test]
fn setstat_size_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let s = store(&dir, Some(gate.clone()));
    put(&s, "f", b"0123456789").unwrap();
    s.set_size(&p("f"), 4).unwrap();
    assert_eq!(get(&s, "f"), b"0123");
    assert_eq!(gate.seen().last().unwrap().2, b"0123");
}

#[test]
fn without_checks_writes_stay_in_place_and_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(false);
    let s = store(&dir, Some(gate.clone()));
    put(&s, "f", b"EICAR is fine here").unwrap();
    let ino = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.path().join("f")).unwrap().ino()
    };
    let before = ino();
    let f = s.open(&p("f"), IN_PLACE).unwrap();
    f.write_at(0, b"eicar").unwrap();
    f.close().unwrap();
    assert_eq!(ino(), before, "written in place");
    assert!(gate.seen().is_empty());
    assert_eq!(gate.committed(), vec![("/f".into(), 18), ("/f".into(), 18)]);
}
