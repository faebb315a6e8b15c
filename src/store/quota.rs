//! Per-user quotas: plaintext bytes and regular files.
//!
//! A [`QuotaAccount`] is the one set of books of a user that every session
//! of that user shares (through their [`UserStore`](super::UserStore)s). It
//! holds what is stored (`used`) and what uploads in progress have claimed
//! but not stored yet (`reserved`), and checks every growth against the
//! user's current [`Limits`] (asked again at each check, so a change to the
//! users file applies from the next write).
//!
//! How a file's growth is counted (see `handle`):
//!
//! - A staged upload (a new file, a truncating open, a copy-on-open)
//!   reserves what it grows beyond the size of the file it replaces (its
//!   *baseline*) before each write; a write that would pass the limit is
//!   refused with [`QuotaExceeded`] and nothing of it is written. At commit
//!   the reservation moves to `used` as "new size - replaced file's size"
//!   (the replaced file's size taken at commit); a discarded upload gives
//!   its reservation back.
//! - A file changed in place (a write past the end, a SETSTAT size) is
//!   charged to `used` directly, before the write, under the file's lock.
//! - A new file's name costs one file at OPEN (the empty placeholder that
//!   holds the name is a real file); a discarded upload that removes its
//!   placeholder gives it back. Directories and links are not counted; a
//!   file with several hard links counts once.
//!
//! The check and the reservation are one step under the account's lock,
//! so concurrent uploads of one user cannot both pass it.
//!
//! [`scan_usage`] recomputes the figures from what is stored, from each
//! file's stored length and last length field (no file is decrypted).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::sync::Mutex;

use super::dir::attributes_of_all;
use super::storage::{Kind, ObjectPath, SpaceInfo, Storage};
use crate::sync::lock;

/// A user's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most plaintext bytes stored.
    pub bytes: Option<u64>,
    /// Most regular files stored.
    pub files: Option<u64>,
}

impl Limits {
    /// Whether there is any limit.
    pub fn is_limited(&self) -> bool {
        self.bytes.is_some() || self.files.is_some()
    }
}

/// What a user stores: plaintext bytes and regular files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Plaintext bytes of the user's regular files.
    pub bytes: u64,
    /// Regular files (each stored file once, whatever its links).
    pub files: u64,
}

/// Which limit a refused growth would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `quota_bytes`.
    Bytes,
    /// `quota_files`.
    Files,
}

/// A growth or a new file refused by the user's quota; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct QuotaExceeded {
    /// The limit passed.
    pub kind: QuotaKind,
    /// Its value.
    pub limit: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            QuotaKind::Bytes => write!(
                f,
                "quota exceeded: the user's quota is {} of stored data",
                super::bounds::human_size(self.limit)
            ),
            QuotaKind::Files => write!(
                f,
                "quota exceeded: the user's quota is {} file(s)",
                self.limit
            ),
        }
    }
}

/// Where an account's figures go (the layer above keeps them on disk).
pub trait UsageSink: Send + Sync {
    /// The stored usage changed (a file stored, changed in place or
    /// removed). Calls are serialised; `usage` is current at the call.
    fn changed(&self, usage: Usage);
    /// The account is going (its last session and handle are gone); called
    /// once, with the final usage.
    fn released(&self, usage: Usage);
}

/// The books: what is stored and what uploads in progress claim.
#[derive(Debug, Default)]
struct Books {
    used: Usage,
    reserved: u64,
}

/// One user's quota account, shared by all their sessions (see the module
/// documentation).
pub struct QuotaAccount {
    books: Mutex<Books>,
    limits: Box<dyn Fn() -> Limits + Send + Sync>,
    sink: Option<Box<dyn UsageSink>>,
    /// Serialises the sink's `changed` calls, so that the last one written
    /// is the latest figure.
    record: Mutex<()>,
    /// Held across "look at what a name holds, then change it" (a commit
    /// over a file, a remove, a rename over a file), so that two sessions
    /// of the user cannot both count the same file as gone.
    names: Mutex<()>,
}

impl fmt::Debug for QuotaAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaAccount")
            .field("books", &*lock(&self.books))
            .finish_non_exhaustive()
    }
}

impl QuotaAccount {
    /// An account that starts from `used` and checks growth against what
    /// `limits` says at that moment.
    pub fn new(used: Usage, limits: impl Fn() -> Limits + Send + Sync + 'static) -> Self {
        QuotaAccount {
            books: Mutex::new(Books { used, reserved: 0 }),
            limits: Box::new(limits),
            sink: None,
            record: Mutex::new(()),
            names: Mutex::new(()),
        }
    }

    /// This account with its changes reported to `sink`.
    pub fn with_sink(mut self, sink: Box<dyn UsageSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Holds the user's names still from a look at what a name holds to
    /// the change that replaces or removes it (see `names`).
    pub(crate) fn hold_names(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.names)
    }

    /// The user's limits now.
    pub fn limits(&self) -> Limits {
        (self.limits)()
    }

    /// What is stored (uploads in progress not included).
    pub fn usage(&self) -> Usage {
        lock(&self.books).used
    }

    /// Bytes claimed by uploads in progress.
    pub fn reserved(&self) -> u64 {
        lock(&self.books).reserved
    }

    /// Fails if `n` more bytes would pass the byte limit, counting what
    /// uploads in progress claim; takes nothing.
    pub(crate) fn check_room(&self, n: u64) -> Result<(), QuotaExceeded> {
        if n == 0 {
            return Ok(());
        }
        let limit = self.limits().bytes;
        let books = lock(&self.books);
        fits(&books, n, limit)
    }

    /// Fails if committing an upload that reserved `reserved` bytes, of
    /// `new_size` bytes over a file of `replaced` bytes, would pass the
    /// byte limit: when the upload grows the usage by more than it
    /// reserved (the file it replaces shrank or went meanwhile), the rest
    /// must fit now.
    pub(crate) fn check_commit(
        &self,
        reserved: u64,
        new_size: u64,
        replaced: u64,
    ) -> Result<(), QuotaExceeded> {
        let unreserved = new_size.saturating_sub(replaced).saturating_sub(reserved);
        self.check_room(unreserved)
    }

    /// Claims `n` bytes for an upload in progress, or fails if that would
    /// pass the byte limit.
    pub(crate) fn reserve(&self, n: u64) -> Result<(), QuotaExceeded> {
        if n == 0 {
            return Ok(());
        }
        let limit = self.limits().bytes;
        let mut books = lock(&self.books);
        fits(&books, n, limit)?;
        books.reserved += n;
        Ok(())
    }

    /// Gives back `n` reserved bytes.
    pub(crate) fn unreserve(&self, n: u64) {
        let mut books = lock(&self.books);
        books.reserved = books.reserved.saturating_sub(n);
    }

    /// Counts `n` more stored bytes (a file growing in place), or fails if
    /// that would pass the byte limit.
    pub(crate) fn charge(&self, n: u64) -> Result<(), QuotaExceeded> {
        if n == 0 {
            return Ok(());
        }
        let limit = self.limits().bytes;
        let mut books = lock(&self.books);
        fits(&books, n, limit)?;
        books.used.bytes = books.used.bytes.saturating_add(n);
        Ok(())
    }

    /// Adds `n` reserved bytes whatever the limit (an operation that grew
    /// a file beyond what it claimed; not expected).
    pub(crate) fn add_reserved(&self, n: u64) {
        let mut books = lock(&self.books);
        books.reserved = books.reserved.saturating_add(n);
    }

    /// Adds `n` stored bytes whatever the limit (see
    /// [`QuotaAccount::add_reserved`]).
    pub(crate) fn add_used(&self, n: u64) {
        let mut books = lock(&self.books);
        books.used.bytes = books.used.bytes.saturating_add(n);
    }

    /// Counts one file fewer, quietly (a file counted at OPEN that turned
    /// out not to be new).
    pub(crate) fn uncharge_file(&self) {
        let mut books = lock(&self.books);
        books.used.files = books.used.files.saturating_sub(1);
    }

    /// Counts `n` fewer stored bytes.
    pub(crate) fn credit(&self, n: u64) {
        let mut books = lock(&self.books);
        books.used.bytes = books.used.bytes.saturating_sub(n);
    }

    /// Counts one more stored file, or fails if that would pass the file
    /// limit.
    pub(crate) fn charge_file(&self) -> Result<(), QuotaExceeded> {
        let limit = self.limits().files;
        let mut books = lock(&self.books);
        if let Some(limit) = limit
            && books.used.files.saturating_add(1) > limit
        {
            return Err(QuotaExceeded {
                kind: QuotaKind::Files,
                limit,
            });
        }
        books.used.files += 1;
        Ok(())
    }

    /// Counts a removed file of `bytes` plaintext bytes (`files` is 1, or
    /// 0 for a name whose file stays under another link).
    pub(crate) fn removed(&self, bytes: u64, files: u64) {
        {
            let mut books = lock(&self.books);
            books.used.bytes = books.used.bytes.saturating_sub(bytes);
            books.used.files = books.used.files.saturating_sub(files);
        }
        self.changed();
    }

    /// Settles a committed upload: its `reserved` bytes become stored
    /// ones; the file it replaced (`replaced` bytes) is gone, and `files`
    /// were added (1 if it replaced no file).
    pub(crate) fn committed(&self, reserved: u64, new_size: u64, replaced: u64, files: u64) {
        {
            let mut books = lock(&self.books);
            books.reserved = books.reserved.saturating_sub(reserved);
            books.used.bytes = books
                .used
                .bytes
                .saturating_add(new_size)
                .saturating_sub(replaced);
            books.used.files = books.used.files.saturating_add(files);
        }
        self.changed();
    }

    /// Tells the sink the current usage.
    pub(crate) fn changed(&self) {
        if let Some(sink) = &self.sink {
            let _serial = lock(&self.record);
            sink.changed(self.usage());
        }
    }

    /// `space` (the disk's figures) with the user's limits as the size and
    /// their usage as the used part, so that `df` shows the quota. Sizes
    /// are in bytes (fragment size 1); the free figures never exceed the
    /// disk's.
    pub fn apply_to(&self, space: SpaceInfo) -> SpaceInfo {
        let limits = self.limits();
        let (used, reserved) = {
            let books = lock(&self.books);
            (books.used, books.reserved)
        };
        let mut out = space;
        if let Some(limit) = limits.bytes {
            let disk_free = space.blocks_avail.saturating_mul(space.fragment_size);
            let free = limit
                .saturating_sub(used.bytes.saturating_add(reserved))
                .min(disk_free);
            out.fragment_size = 1;
            out.blocks = limit;
            out.blocks_free = free;
            out.blocks_avail = free;
        }
        if let Some(limit) = limits.files {
            let mut free = limit.saturating_sub(used.files);
            // A filesystem without an inode count (btrfs) reports 0 files.
            if space.files > 0 {
                free = free.min(space.files_avail);
            }
            out.files = limit;
            out.files_free = free;
            out.files_avail = free;
        }
        out
    }
}

impl Drop for QuotaAccount {
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            sink.released(lock(&self.books).used);
        }
    }
}

/// Fails if `n` more bytes would pass `limit` given the books.
fn fits(books: &Books, n: u64, limit: Option<u64>) -> Result<(), QuotaExceeded> {
    match limit {
        Some(limit)
            if books
                .used
                .bytes
                .saturating_add(books.reserved)
                .saturating_add(n)
                > limit =>
        {
            Err(QuotaExceeded {
                kind: QuotaKind::Bytes,
                limit,
            })
        }
        _ => Ok(()),
    }
}

/// Most entries [`scan_usage`] walks: far beyond a real user's tree, a
/// bound on the work one scan can cost (a tree this large is reported, not
/// counted short).
pub const MAX_SCAN_ENTRIES: u64 = 10_000_000;

/// Recomputes what the tree in `storage` holds: every regular file's
/// plaintext size (from its stored length and last length field; nothing
/// is decrypted) once per stored file, whatever its hard links. Staged
/// uploads (reserved names) are not part of the tree. A directory that
/// cannot be listed fails the scan rather than counting it short.
pub fn scan_usage(storage: &dyn Storage) -> io::Result<Usage> {
    let mut usage = Usage::default();
    let mut linked = HashSet::new();
    let mut seen = 0u64;
    let mut dirs = vec![ObjectPath::root()];
    while let Some(dir) = dirs.pop() {
        let mut files = Vec::new();
        for (name, meta) in storage.read_dir(&dir)? {
            seen += 1;
            if seen > MAX_SCAN_ENTRIES {
                return Err(io::Error::other(format!(
                    "more than {MAX_SCAN_ENTRIES} entries: not counted"
                )));
            }
            let Ok(path) = dir.join(&name) else { continue };
            match meta.kind {
                Kind::Dir => dirs.push(path),
                Kind::File => {
                    if meta.nlink > 1 && !linked.insert(meta.identity) {
                        continue;
                    }
                    files.push((name, path, meta));
                }
                Kind::Symlink | Kind::Other => {}
            }
        }
        // A directory's sizes at once: on an object store each is a
        // request.
        for (_, attributes) in attributes_of_all(storage, files) {
            usage.files += 1;
            usage.bytes += attributes.size;
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(bytes: Option<u64>, files: Option<u64>) -> QuotaAccount {
        QuotaAccount::new(Usage::default(), move || Limits { bytes, files })
    }

    #[test]
    fn reservations_count_against_the_limit_until_given_back() {
        let a = account(Some(100), None);
        a.reserve(60).unwrap();
        let e = a.reserve(41).unwrap_err();
        assert_eq!(e.kind, QuotaKind::Bytes);
        assert_eq!(e.limit, 100);
        assert!(e.to_string().starts_with("quota exceeded"), "{e}");
        a.reserve(40).unwrap();
        a.unreserve(40);
        a.committed(60, 60, 0, 1);
        assert_eq!(
            a.usage(),
            Usage {
                bytes: 60,
                files: 1
            }
        );
        assert_eq!(a.reserved(), 0);
        assert!(a.charge(41).is_err());
        a.charge(40).unwrap();
        a.removed(100, 1);
        assert_eq!(a.usage(), Usage::default());
    }

    #[test]
    fn a_replaced_file_counts_only_its_difference() {
        let a = QuotaAccount::new(
            Usage {
                bytes: 80,
                files: 1,
            },
            || Limits {
                bytes: Some(100),
                files: None,
            },
        );
        // Replacing the 80-byte file by a 90-byte one reserves 10.
        a.reserve(10).unwrap();
        a.committed(10, 90, 80, 0);
        assert_eq!(
            a.usage(),
            Usage {
                bytes: 90,
                files: 1
            }
        );
    }

    #[test]
    fn the_file_limit_counts_files() {
        let a = account(None, Some(2));
        a.charge_file().unwrap();
        a.charge_file().unwrap();
        let e = a.charge_file().unwrap_err();
        assert_eq!(e.kind, QuotaKind::Files);
        assert!(e.to_string().contains("2 file(s)"), "{e}");
        a.removed(0, 1);
        a.charge_file().unwrap();
    }

    #[test]
    fn no_limit_never_refuses() {
        let a = account(None, None);
        a.reserve(u64::MAX).unwrap();
        a.charge(u64::MAX).unwrap();
        a.charge_file().unwrap();
    }

    #[test]
    fn a_lowered_limit_refuses_growth_but_not_shrinking() {
        let a = QuotaAccount::new(
            Usage {
                bytes: 500,
                files: 3,
            },
            || Limits {
                bytes: Some(100),
                files: Some(1),
            },
        );
        assert!(a.charge(1).is_err());
        assert!(a.charge_file().is_err());
        a.credit(450);
        a.charge(50).unwrap();
    }

    #[test]
    fn df_figures_show_the_quota_and_the_usage() {
        let a = QuotaAccount::new(
            Usage {
                bytes: 300,
                files: 2,
            },
            || Limits {
                bytes: Some(1000),
                files: Some(10),
            },
        );
        a.reserve(100).unwrap();
        let disk = SpaceInfo {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 1 << 30,
            blocks_free: 1 << 29,
            blocks_avail: 1 << 29,
            files: 1 << 20,
            files_free: 1 << 19,
            files_avail: 1 << 19,
            fsid: 7,
            flags: 0,
            name_max: 255,
        };
        let s = a.apply_to(disk);
        assert_eq!(s.fragment_size * s.blocks, 1000);
        assert_eq!(s.fragment_size * (s.blocks - s.blocks_free), 400);
        assert_eq!(s.blocks_avail, 600);
        assert_eq!((s.files, s.files_free), (10, 8));
        assert_eq!(s.block_size, 4096);
        // Without limits the disk's figures stay.
        assert_eq!(account(None, None).apply_to(disk), disk);
    }

    type Log = std::sync::Arc<Mutex<Vec<(&'static str, Usage)>>>;

    struct Recorder(Log);

    impl UsageSink for Recorder {
        fn changed(&self, usage: Usage) {
            lock(&self.0).push(("changed", usage));
        }
        fn released(&self, usage: Usage) {
            lock(&self.0).push(("released", usage));
        }
    }

    #[test]
    fn the_sink_hears_changes_and_the_release() {
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let a = account(None, None).with_sink(Box::new(Recorder(log.clone())));
        a.reserve(5).unwrap();
        a.committed(5, 5, 0, 1);
        drop(a);
        let one = Usage { bytes: 5, files: 1 };
        assert_eq!(*lock(&log), vec![("changed", one), ("released", one)]);
    }

    /// A store over a temporary directory with a quota whose limits the
    /// test can change.
    struct Fx {
        _dir: tempfile::TempDir,
        store: super::super::UserStore,
        account: std::sync::Arc<QuotaAccount>,
        limits: std::sync::Arc<Mutex<Limits>>,
    }

    impl Fx {
        fn new(bytes: Option<u64>, files: Option<u64>) -> Fx {
            use crate::keys::DataKey;
            use crate::store::storage::LocalStorage;
            use std::sync::Arc;
            let dir = tempfile::tempdir().unwrap();
            let limits = Arc::new(Mutex::new(Limits { bytes, files }));
            let l = limits.clone();
            let account = Arc::new(QuotaAccount::new(Usage::default(), move || *lock(&l)));
            let storage = Arc::new(LocalStorage::open_root(dir.path()).unwrap());
            let store =
                super::super::UserStore::new(storage, Arc::new(DataKey::from_bytes([5; 32])))
                    .with_quota(account.clone());
            Fx {
                _dir: dir,
                store,
                account,
                limits,
            }
        }

        fn path(name: &str) -> ObjectPath {
            ObjectPath::from_components([name]).unwrap()
        }

        fn upload(&self, name: &str) -> super::super::EncryptedFile {
            self.store
                .open(
                    &Self::path(name),
                    super::super::OpenOptions {
                        write: true,
                        create: true,
                        truncate: true,
                        ..Default::default()
                    },
                )
                .unwrap()
        }

        fn in_place(&self, name: &str) -> super::super::EncryptedFile {
            self.store
                .open(
                    &Self::path(name),
                    super::super::OpenOptions {
                        read: true,
                        write: true,
                        ..Default::default()
                    },
                )
                .unwrap()
        }

        fn put(&self, name: &str, data: &[u8]) {
            let f = self.upload(name);
            f.write_at(0, data).unwrap();
            f.close().unwrap();
        }

        fn size(&self, name: &str) -> Option<u64> {
            self.store
                .stat(&Self::path(name), false)
                .ok()
                .map(|a| a.size)
        }

        /// The books agree with a scan of the tree, and nothing is reserved.
        fn assert_books(&self, bytes: u64, files: u64) {
            let usage = Usage { bytes, files };
            assert_eq!(self.account.usage(), usage);
            assert_eq!(self.account.reserved(), 0);
            assert_eq!(self.store.scan_usage().unwrap(), usage);
        }
    }

    fn is_quota(e: &super::super::StoreError) -> bool {
        matches!(e, super::super::StoreError::Quota(_))
    }

    #[test]
    fn an_upload_past_the_quota_stores_nothing_and_keeps_the_previous_version() {
        let fx = Fx::new(Some(100), None);
        fx.put("f", &[1; 60]);
        fx.assert_books(60, 1);
        // Replacing it: only the growth beyond its 60 bytes is reserved.
        let f = fx.upload("f");
        f.write_at(0, &[2; 100]).unwrap();
        assert_eq!(fx.account.reserved(), 40);
        let e = f.write_at(100, &[2; 1]).unwrap_err();
        assert!(is_quota(&e), "{e}");
        assert!(e.to_string().starts_with("quota exceeded"), "{e}");
        // The handle is poisoned: close reports the quota, nothing stored.
        assert!(is_quota(&f.close().unwrap_err()));
        drop(f);
        assert_eq!(fx.size("f"), Some(60));
        fx.assert_books(60, 1);
        // A new file past what is left: its placeholder goes too.
        let g = fx.upload("g");
        assert!(is_quota(&g.write_at(0, &[3; 41]).unwrap_err()));
        assert!(g.close().is_err());
        drop(g);
        assert_eq!(fx.size("g"), None);
        fx.assert_books(60, 1);
        // Within the quota, a replacement settles at the difference.
        let f = fx.upload("f");
        f.write_at(0, &[4; 100]).unwrap();
        f.close().unwrap();
        fx.assert_books(100, 1);
    }

    #[test]
    fn uploads_of_one_user_at_once_cannot_both_pass_the_quota() {
        let fx = Fx::new(Some(100), None);
        let (a, b) = (fx.upload("a"), fx.upload("b"));
        a.write_at(0, &[1; 70]).unwrap();
        assert!(is_quota(&b.write_at(0, &[1; 70]).unwrap_err()));
        b.write_at(0, &[1; 30]).ok();
        a.close().unwrap();
        assert!(b.close().is_err(), "b lost a write: not stored");
        drop((a, b));
        fx.assert_books(70, 1);
    }

    #[test]
    fn growth_in_place_is_charged_before_the_write_and_shrinking_credits() {
        let fx = Fx::new(Some(100), None);
        fx.put("f", &[1; 50]);
        let f = fx.in_place("f");
        // A write past the end that would pass the quota writes nothing.
        assert!(is_quota(&f.write_at(90, &[2; 20]).unwrap_err()));
        assert_eq!(f.size(), 50);
        f.write_at(90, &[2; 10]).unwrap();
        assert_eq!(fx.account.usage().bytes, 100);
        assert!(is_quota(&f.set_len(101).unwrap_err()));
        f.set_len(20).unwrap();
        f.close().unwrap();
        drop(f);
        fx.assert_books(20, 1);
        assert!(is_quota(
            &fx.store.set_size(&Fx::path("f"), 101).unwrap_err()
        ));
        fx.store.set_size(&Fx::path("f"), 100).unwrap();
        fx.assert_books(100, 1);
    }

    #[test]
    fn the_file_quota_refuses_a_new_name_at_open() {
        let fx = Fx::new(None, Some(2));
        fx.put("a", b"1");
        fx.put("b", b"2");
        let opts = super::super::OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..Default::default()
        };
        let e = fx.store.open(&Fx::path("c"), opts).err().unwrap();
        assert!(is_quota(&e), "{e}");
        assert_eq!(fx.size("c"), None);
        // Replacing an existing file needs no new file.
        fx.put("a", b"11");
        fx.assert_books(3, 2);
        fx.store.remove(&Fx::path("b")).unwrap();
        fx.put("c", b"3");
        fx.assert_books(3, 2);
    }

    #[test]
    fn removing_renaming_over_and_links_keep_the_books_right() {
        let fx = Fx::new(Some(1000), None);
        fx.put("a", &[1; 100]);
        fx.put("b", &[1; 200]);
        fx.store
            .rename(&Fx::path("a"), &Fx::path("b"), true)
            .unwrap();
        fx.assert_books(100, 1);
        fx.store.hard_link(&Fx::path("b"), &Fx::path("c")).unwrap();
        fx.assert_books(100, 1);
        fx.store.remove(&Fx::path("c")).unwrap();
        fx.assert_books(100, 1);
        fx.store.symlink("b", &Fx::path("l")).unwrap();
        fx.store.mkdir(&Fx::path("d"), None).unwrap();
        fx.assert_books(100, 1);
        fx.store.remove(&Fx::path("b")).unwrap();
        fx.assert_books(0, 0);
    }

    #[test]
    fn a_dropped_upload_gives_back_its_reservation_and_its_name() {
        let fx = Fx::new(Some(100), Some(5));
        let f = fx.upload("f");
        f.write_at(0, &[1; 80]).unwrap();
        assert_eq!(fx.account.reserved(), 80);
        assert_eq!(fx.account.usage().files, 1);
        drop(f);
        fx.assert_books(0, 0);
    }

    #[test]
    fn a_lowered_limit_applies_to_the_next_write() {
        let fx = Fx::new(Some(100), None);
        let f = fx.upload("f");
        f.write_at(0, &[1; 50]).unwrap();
        lock(&fx.limits).bytes = Some(60);
        assert!(is_quota(&f.write_at(50, &[1; 20]).unwrap_err()));
        lock(&fx.limits).bytes = None;
        f.write_at(50, &[1; 20]).unwrap();
        // The earlier refusal poisoned the upload.
        assert!(f.close().is_err());
    }

    #[test]
    fn an_upload_over_a_file_removed_meanwhile_must_fit_without_its_credit() {
        let fx = Fx::new(Some(100), None);
        fx.put("f", &[1; 60]);
        let f = fx.upload("f");
        // Within the 60 bytes it replaces: nothing reserved.
        f.write_at(0, &[2; 60]).unwrap();
        fx.store.remove(&Fx::path("f")).unwrap();
        // Past them: 100 reserved, which the books allow (0 stored now)...
        f.write_at(60, &[2; 100]).unwrap();
        // ...but stored, the upload would count 160 bytes.
        let e = f.close().unwrap_err();
        assert!(is_quota(&e), "{e}");
        drop(f);
        assert_eq!(fx.size("f"), None);
        fx.assert_books(0, 0);
    }

    /// A gate that checks every upload and rejects content with a 0xFF
    /// byte: writes to existing files go through a copy (copy-on-open).
    struct Scanner;

    impl super::super::UploadGate for Scanner {
        fn checks(&self) -> bool {
            true
        }
        fn check(
            &self,
            _upload: super::super::Upload<'_>,
            content: &mut dyn std::io::Read,
        ) -> Result<(), super::super::Rejection> {
            let mut all = Vec::new();
            content.read_to_end(&mut all).unwrap();
            if all.contains(&0xFF) {
                return Err(super::super::Rejection {
                    reason: "bad byte".into(),
                });
            }
            Ok(())
        }
        fn committed(&self, _upload: super::super::Upload<'_>) {}
    }

    #[test]
    fn with_a_scanner_a_copy_counts_only_its_growth_and_a_rejection_gives_it_back() {
        let mut fx = Fx::new(Some(100), None);
        fx.put("f", &[1; 60]);
        // The same store (and quota), now with the scanner.
        let placeholder = super::super::UserStore::new(
            std::sync::Arc::new(
                crate::store::storage::LocalStorage::open_root(fx._dir.path()).unwrap(),
            ),
            std::sync::Arc::new(crate::keys::DataKey::from_bytes([5; 32])),
        );
        fx.store =
            std::mem::replace(&mut fx.store, placeholder).with_gate(std::sync::Arc::new(Scanner));
        // In place, as far as the client sees: a copy, whose first 60
        // bytes are the file's own.
        let f = fx.in_place("f");
        assert_eq!(fx.account.reserved(), 0);
        assert!(is_quota(&f.write_at(60, &[2; 41]).unwrap_err()));
        f.write_at(60, &[2; 40]).unwrap();
        assert_eq!(fx.account.reserved(), 40);
        // As in place, a refused write is just refused: the others stay.
        f.close().unwrap();
        drop(f);
        fx.assert_books(100, 1);
        // A rejected copy gives its reservation back.
        fx.store.set_size(&Fx::path("f"), 50).unwrap();
        let f = fx.in_place("f");
        f.write_at(50, &[0xFF; 10]).unwrap();
        assert!(matches!(
            f.close().unwrap_err(),
            super::super::StoreError::Rejected { .. }
        ));
        drop(f);
        fx.assert_books(50, 1);
    }
}
