//! Offline check of stored files, chunk by chunk, for `dropzone verify`:
//! [`check_blob`] for one file, [`check_tree`] for a user's whole tree.
//!
//! A reader stops at the first chunk that fails; an operator repairing a
//! store after a crash needs every bad chunk, where it lies (plaintext and
//! stored byte ranges) and, where the MACs can tell, why it is bad. A chunk
//! that authenticates with the other `final` flag is an intact chunk in the
//! wrong place at the end of the file: that is what an interrupted in-place
//! extension or append leaves (see docs/FORMAT.md, "Crashes"), and naming it
//! tells the operator that every byte before it is good.

use std::io;
use std::ops::Range;

use super::format::{
    self, CHUNK_SIZE, FULL_RECORD_LEN, FileKeys, FormatError, HEADER_LEN, LEN_FIELD, Layout,
};
use super::storage::{Access, Blob, Kind, ObjectPath};
use super::{StoreError, UserStore};
use crate::keys::DataKey;

/// One damaged part of a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The chunk index, or `None` for the header.
    pub chunk: Option<u64>,
    /// Plaintext bytes this part holds (empty for the header).
    pub plaintext: Range<u64>,
    /// Stored bytes of this part.
    pub stored: Range<u64>,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.chunk {
            None => write!(
                f,
                "header (stored bytes {}..{}): {}",
                self.stored.start, self.stored.end, self.reason
            ),
            Some(i) => write!(
                f,
                "chunk {i} (plaintext bytes {}..{}, stored bytes {}..{}): {}",
                self.plaintext.start,
                self.plaintext.end,
                self.stored.start,
                self.stored.end,
                self.reason
            ),
        }
    }
}

/// The outcome of checking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Plaintext size the layout gives, if it gives one.
    pub size: Option<u64>,
    /// Records checked.
    pub chunks: u64,
    /// Every damaged part, in file order; empty when the file is sound.
    pub problems: Vec<Problem>,
}

impl FileReport {
    /// Whether every part of the file authenticated.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every part of a stored file and reports each damaged one. Only
/// I/O errors other than a short file are returned as errors.
pub fn check_blob(blob: &dyn Blob, key: &DataKey) -> Result<FileReport, StoreError> {
    let stored_len = blob.meta()?.stored_len;
    let mut report = FileReport {
        size: None,
        chunks: 0,
        problems: Vec::new(),
    };
    let header_problem = |reason: String| Problem {
        chunk: None,
        plaintext: 0..0,
        stored: 0..stored_len.min(HEADER_LEN as u64),
        reason,
    };
    if stored_len < HEADER_LEN as u64 {
        report.problems.push(header_problem(format!(
            "the file is {stored_len} bytes long, shorter than its {HEADER_LEN}-byte header"
        )));
        return Ok(report);
    }
    let mut header = [0u8; HEADER_LEN];
    blob.read_exact_at(&mut header, 0)?;
    let id = match format::parse_header(&header) {
        Ok(id) => id,
        Err(e) => {
            report.problems.push(header_problem(e.to_string()));
            return Ok(report);
        }
    };
    let keys = FileKeys::derive(key.expose(), &id);
    if let Err(e) = format::verify_header(&keys, &header) {
        // Without a trusted header the chunks cannot be told apart from
        // another file's or another key's: one line says it all.
        report.problems.push(header_problem(format!(
            "{e} (modified, or not encrypted with this user's key)"
        )));
        return Ok(report);
    }

    let body = stored_len - HEADER_LEN as u64;
    let full = FULL_RECORD_LEN as u64;
    // The records to check: `count` of them, all full and not final except
    // the last of a valid layout, which is `last_len` long and final.
    let (count, last_len, last_final, tail) = match Layout::from_stored_len(stored_len) {
        Ok(layout) => {
            let mut field = [0u8; LEN_FIELD];
            blob.read_exact_at(&mut field, format::record_offset(layout.chunks - 1))?;
            report.size = layout.plaintext_len(field).ok();
            (layout.chunks, layout.last_record_len, true, None)
        }
        Err(_) => {
            // The file ends inside a record: check the whole records before
            // it and report the remainder as one incomplete record.
            let whole = body / full;
            let start = format::record_offset(whole);
            let problem = Problem {
                chunk: Some(whole),
                plaintext: whole * CHUNK_SIZE as u64..(whole + 1) * CHUNK_SIZE as u64,
                stored: start..stored_len,
                reason: format!(
                    "incomplete record: the file ends {} bytes into it (an interrupted write, or cut short)",
                    stored_len - start
                ),
            };
            (whole, FULL_RECORD_LEN, false, Some(problem))
        }
    };

    let mut record = Vec::with_capacity(FULL_RECORD_LEN);
    let mut plain = Vec::with_capacity(CHUNK_SIZE);
    for index in 0..count {
        let last = index + 1 == count;
        let len = if last { last_len } else { FULL_RECORD_LEN };
        let is_final = last && last_final;
        report.chunks += 1;
        let offset = format::record_offset(index);
        record.resize(len, 0);
        let start = index * CHUNK_SIZE as u64;
        let chunk_plain = (len - format::RECORD_OVERHEAD).min(CHUNK_SIZE) as u64;
        let problem = |reason: String| Problem {
            chunk: Some(index),
            plaintext: start..start + chunk_plain,
            stored: offset..offset + len as u64,
            reason,
        };
        if let Err(e) = blob.read_exact_at(&mut record, offset) {
            report
                .problems
                .push(problem(format!("cannot read the record: {e}")));
            continue;
        }
        plain.clear();
        let Err(e) = format::decode_chunk(&keys, &id, index, is_final, &record, &mut plain) else {
            continue;
        };
        plain.clear();
        let other = format::decode_chunk(&keys, &id, index, !is_final, &record, &mut plain);
        let reason = match (other, is_final) {
            (Ok(()), true) => "intact, but not marked as the last chunk: the file ends early here \
                 (an interrupted append, extension or truncation; every chunk before it is good)"
                .to_owned(),
            (Ok(()), false) => "intact, but marked as the last chunk while more follow \
                 (an interrupted extension)"
                .to_owned(),
            (Err(_), _) => describe(&e),
        };
        report.problems.push(problem(reason));
    }
    report.problems.extend(tail);
    Ok(report)
}

/// What [`check_tree`] could not vouch for, one item per directory or file.
#[derive(Debug)]
pub enum Failure {
    /// A directory whose entries could not be listed (its files go unchecked).
    Unlisted {
        /// The directory.
        dir: ObjectPath,
        /// Why it could not be listed.
        error: io::Error,
    },
    /// A file that could not be opened or read.
    Unreadable {
        /// The file.
        file: ObjectPath,
        /// Why.
        error: StoreError,
    },
    /// A file with damaged parts.
    Damaged {
        /// The file.
        file: ObjectPath,
        /// Every damaged part.
        report: FileReport,
    },
}

/// Checks every file under the root of `store` with [`check_blob`], walking
/// directories depth first, and hands each failure to `on_failure` as it is
/// found (so a report can be printed while the walk goes on). Symbolic links
/// and other special entries are skipped. Returns the number of files
/// checked.
pub fn check_tree(store: &UserStore, mut on_failure: impl FnMut(Failure)) -> u64 {
    let storage = &*store.storage;
    let mut checked = 0;
    let mut dirs = vec![ObjectPath::root()];
    while let Some(dir) = dirs.pop() {
        let entries = match storage.read_dir(&dir) {
            Ok(e) => e,
            Err(error) => {
                on_failure(Failure::Unlisted { dir, error });
                continue;
            }
        };
        for (name, meta) in entries {
            let Ok(path) = dir.join(&name) else { continue };
            match meta.kind {
                Kind::Dir => dirs.push(path),
                Kind::File => {
                    checked += 1;
                    let result = storage
                        .open(&path, Access::Read)
                        .map_err(StoreError::from)
                        .and_then(|blob| check_blob(&*blob, &store.key));
                    match result {
                        Ok(report) if report.is_ok() => {}
                        Ok(report) => on_failure(Failure::Damaged { file: path, report }),
                        Err(error) => on_failure(Failure::Unreadable { file: path, error }),
                    }
                }
                _ => {}
            }
        }
    }
    checked
}

fn describe(e: &FormatError) -> String {
    match e {
        FormatError::Integrity("chunk MAC mismatch") => {
            "chunk MAC mismatch (torn by an interrupted write, modified, or moved)".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::OpenOptions;
    use crate::store::storage::{LocalStorage, Storage};

    const C: u64 = CHUNK_SIZE as u64;
    const R: u64 = FULL_RECORD_LEN as u64;

    fn key() -> Arc<DataKey> {
        Arc::new(DataKey::from_bytes([7u8; 32]))
    }

    struct Fx {
        dir: tempfile::TempDir,
        storage: Arc<LocalStorage>,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let storage = Arc::new(LocalStorage::open_root(dir.path()).unwrap());
            Fx { dir, storage }
        }

        fn put(&self, name: &str, data: &[u8]) {
            let store = UserStore::new(self.storage.clone(), key());
            let opts = OpenOptions {
                write: true,
                create: true,
                truncate: true,
                ..OpenOptions::default()
            };
            let f = store
                .open(&ObjectPath::from_components([name]).unwrap(), opts)
                .unwrap();
            f.write_at(0, data).unwrap();
            f.close().unwrap();
        }

        fn raw(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn check(&self, name: &str) -> FileReport {
            let blob = self
                .storage
                .open(&ObjectPath::from_components([name]).unwrap(), Access::Read)
                .unwrap();
            check_blob(&*blob, &key()).unwrap()
        }
    }

    fn data(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_sound_file_has_no_problems() {
        let fx = Fx::new();
        fx.put("f", &data(3 * C + 100));
        let r = fx.check("f");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!((r.size, r.chunks), (Some(3 * C + 100), 4));
    }

    #[test]
    fn every_torn_chunk_is_named_with_its_ranges() {
        let fx = Fx::new();
        fx.put("f", &data(4 * C + 10));
        let mut raw = std::fs::read(fx.raw("f")).unwrap();
        for i in [1u64, 3] {
            raw[(format::record_offset(i) + 100) as usize] ^= 1;
        }
        std::fs::write(fx.raw("f"), &raw).unwrap();
        let r = fx.check("f");
        let chunks: Vec<_> = r.problems.iter().map(|p| p.chunk).collect();
        assert_eq!(chunks, vec![Some(1), Some(3)], "{r:?}");
        let p = &r.problems[0];
        assert_eq!(p.plaintext, C..2 * C);
        assert_eq!(
            p.stored,
            format::record_offset(1)..format::record_offset(1) + R
        );
        assert!(p.reason.contains("MAC mismatch"), "{p}");
        assert!(
            p.to_string()
                .starts_with(&format!("chunk 1 (plaintext bytes {C}..{}", 2 * C)),
            "{p}"
        );
    }

    #[test]
    fn a_file_cut_at_a_chunk_boundary_says_the_data_before_is_good() {
        // What an interrupted append leaves: the old last chunk rewritten as
        // a full, not final chunk, and nothing after it yet.
        let fx = Fx::new();
        fx.put("f", &data(2 * C + 500));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(fx.raw("f"))
            .unwrap();
        file.set_len(format::record_offset(2)).unwrap();
        let r = fx.check("f");
        assert_eq!(r.problems.len(), 1, "{r:?}");
        let p = &r.problems[0];
        assert_eq!(p.chunk, Some(1));
        assert_eq!(p.plaintext, C..2 * C);
        assert!(p.reason.contains("not marked as the last chunk"), "{p}");
    }

    #[test]
    fn a_final_chunk_followed_by_more_is_named() {
        let fx = Fx::new();
        fx.put("f", &data(C));
        let one = std::fs::read(fx.raw("f")).unwrap();
        // The same file (same id) extended in place to three chunks, then
        // its first record put back as it was: final, with chunks after it.
        let store = UserStore::new(fx.storage.clone(), key());
        store
            .set_size(&ObjectPath::from_components(["f"]).unwrap(), 2 * C + 3)
            .unwrap();
        let mut three = std::fs::read(fx.raw("f")).unwrap();
        let r0 = format::record_offset(0) as usize..format::record_offset(1) as usize;
        three[r0.clone()].copy_from_slice(&one[r0]);
        std::fs::write(fx.raw("f"), &three).unwrap();
        let r = fx.check("f");
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_eq!(r.problems[0].chunk, Some(0));
        assert!(
            r.problems[0]
                .reason
                .contains("marked as the last chunk while more follow")
        );
    }

    #[test]
    fn a_file_ending_inside_a_record_reports_the_incomplete_record() {
        let fx = Fx::new();
        fx.put("f", &data(3 * C));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(fx.raw("f"))
            .unwrap();
        let cut = format::record_offset(2) + 1000;
        file.set_len(cut).unwrap();
        let r = fx.check("f");
        assert_eq!(r.problems.len(), 1, "{r:?}");
        let p = &r.problems[0];
        assert_eq!(p.chunk, Some(2));
        assert_eq!(p.stored, format::record_offset(2)..cut);
        assert!(p.reason.contains("incomplete record"), "{p}");
        assert_eq!(r.chunks, 2, "the two whole records were checked");
    }

    #[test]
    fn a_bad_header_is_one_problem() {
        let fx = Fx::new();
        fx.put("f", &data(5 * C));
        let mut raw = std::fs::read(fx.raw("f")).unwrap();
        raw[20] ^= 1;
        std::fs::write(fx.raw("f"), &raw).unwrap();
        let r = fx.check("f");
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_eq!(r.problems[0].chunk, None);
        assert!(r.problems[0].to_string().starts_with("header"));

        std::fs::write(fx.raw("f"), b"short").unwrap();
        let r = fx.check("f");
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert!(
            r.problems[0]
                .reason
                .contains("shorter than its 64-byte header")
        );
    }

    #[test]
    fn the_tree_walk_checks_every_file_and_reports_each_failure() {
        let fx = Fx::new();
        fx.put("good", &data(2 * C));
        fx.put("bad", &data(3 * C));
        std::fs::create_dir(fx.raw("sub")).unwrap();
        let store = UserStore::new(fx.storage.clone(), key());
        let opts = OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..OpenOptions::default()
        };
        let nested = ObjectPath::from_components(["sub", "nested"]).unwrap();
        let f = store.open(&nested, opts).unwrap();
        f.write_at(0, &data(C)).unwrap();
        f.close().unwrap();
        let mut raw = std::fs::read(fx.raw("bad")).unwrap();
        raw[format::record_offset(1) as usize + 40] ^= 1;
        std::fs::write(fx.raw("bad"), &raw).unwrap();
        // Not a Dropzone file at all: the header says so.
        std::fs::write(fx.raw("sub/plain"), b"plaintext").unwrap();
        // A link is not followed, nor counted.
        std::os::unix::fs::symlink("good", fx.raw("link")).unwrap();

        let mut failures = Vec::new();
        let checked = check_tree(&store, |f| failures.push(f));
        assert_eq!(checked, 4, "good, bad, sub/nested, sub/plain: {failures:?}");
        let mut damaged: Vec<(String, Vec<Option<u64>>)> = failures
            .iter()
            .map(|f| match f {
                Failure::Damaged { file, report } => (
                    file.to_client_string(),
                    report.problems.iter().map(|p| p.chunk).collect(),
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        damaged.sort();
        assert_eq!(
            damaged,
            [
                ("/bad".to_owned(), vec![Some(1)]),
                ("/sub/plain".to_owned(), vec![None]),
            ]
        );
    }
}
