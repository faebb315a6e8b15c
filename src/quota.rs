//! Keeping each user's quota usage across restarts: the usage records, the
//! server's one account per user, and `dropzone quota scan`.
//!
//! The figures themselves are kept by [`QuotaAccount`] (see
//! [`crate::store::quota`]); this module keeps them on disk, outside the
//! user's tree, in the key directory beside the wrapped key:
//!
//! - `NAME.usage`: the record, a small TOML file: `bytes`, `files` and
//!   `state` (`"clean"` or `"in-use"`);
//! - `NAME.usage.lock`: an `flock`, held by the server for as long as it
//!   has an account for the user (their sessions and open files), and by
//!   `dropzone quota scan` while it rescans.
//!
//! Crash safety: when a server loads a user (their first login), it takes
//! the lock, reads the record and marks it `in-use` (durably) before any
//! session can change a file; while in use, the record is rewritten after
//! each stored or removed file (not synced: for `dropzone user list`);
//! when the user's last session and file are gone, the final figures are
//! written back, durably, as `clean`, and the lock is let go. A record
//! found `in-use` by a server that got the lock was left by a server that
//! stopped without saving (killed, power lost), and so may be wrong: that
//! user's tree is walked once ([`crate::store::quota::scan_usage`], sizes
//! from stored lengths, nothing decrypted) and the walk's figures used. So
//! is a missing or unreadable record (the first login after quotas came).
//! A clean record is trusted: logins do not walk the tree.
//!
//! `dropzone quota scan` rescans users whose lock it can take and writes
//! their records clean. It leaves alone a user a running server holds: that
//! server's figures are live and would overwrite the scan's when the user
//! leaves; the scan says so (rescan once the user's sessions have ended, or
//! restart the server, which rescans nothing that it saved cleanly).
//!
//! One server per key and data directory: two servers on the same
//! directories would each keep an account (the second waits for the
//! first's lock at login).
//!
//! On a shared store (S3, several nodes: [`Quotas::per_node`]) no record
//! is kept and no lock taken, since neither would hold across nodes: each
//! node's account for a user starts from a walk of the user's tree (a
//! listing, and a ranged read of each file's last bytes for its plaintext
//! size: nothing decrypted) when the user's first session on that node
//! begins, and counts what that node's sessions store. Users without a
//! quota get no account there, so their logins walk nothing; a quota set
//! while they have sessions on a node counts from their next session on
//! that node. Quotas are
//! therefore enforced per node: a user with sessions on N nodes at once can
//! exceed the limit by what N - 1 of them let through, at most
//! (N - 1) x (limit - usage when their sessions began); a login that starts
//! after the others' uploads sees them. `dropzone quota scan` reports the
//! figures of the walk, and `dropzone user list` shows a walk made when it
//! runs ([`counted`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::store::quota::{Limits, QuotaAccount, Usage, UsageSink};
use crate::store::storage::Storage;
use crate::store::{Backend, UserStore};
use crate::sync::lock;
use crate::username::UserName;

/// Largest record read: a real one is under 200 bytes.
const MAX_RECORD_LEN: u64 = 4096;

/// A usage record as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    bytes: u64,
    files: u64,
    state: RecordState,
}

/// Whether a record can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordState {
    /// Written when the server let the user go, or by a scan: exact.
    Clean,
    /// A server had (or has) the user loaded: exact only while that server
    /// runs; otherwise the server stopped without saving.
    InUse,
}

/// What `dropzone user list` shows of a user's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageView {
    /// The recorded figures.
    pub usage: Usage,
    /// How far to trust them.
    pub status: UsageStatus,
}

/// How far a recorded usage can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStatus {
    /// Saved cleanly: exact.
    Clean,
    /// A running server has the user loaded: as of its last stored or
    /// removed file.
    Live,
    /// Left by a server that stopped without saving: recomputed at the
    /// user's next login, or by `dropzone quota scan`.
    Stale,
}

/// The record and lock paths of `user` in `dir`.
fn paths(dir: &Path, user: &UserName) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{user}.usage")),
        dir.join(format!("{user}.usage.lock")),
    )
}

/// Reads `user`'s record; `None` if there is none or it cannot be used
/// (then the tree is rescanned).
fn read_record(dir: &Path, user: &UserName) -> Option<RawRecord> {
    let (record, _) = paths(dir, user);
    let bytes = match crate::atomic_file::read_small(&record, MAX_RECORD_LEN) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "usage record unreadable; rescanning");
            return None;
        }
    };
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str::<RawRecord>(text).map_err(|e| e.to_string()));
    match parsed {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "usage record damaged; rescanning");
            None
        }
    }
}

/// Writes `user`'s record: durably (synced, for a record that will be
/// trusted), or just atomically (an in-use record, never trusted after a
/// crash, rewritten often).
fn write_record(
    dir: &Path,
    user: &UserName,
    usage: Usage,
    state: RecordState,
    durable: bool,
) -> io::Result<()> {
    let raw = RawRecord {
        bytes: usage.bytes,
        files: usage.files,
        state,
    };
    let text = format!(
        "# Quota usage of user {user}, kept by Dropzone (see `dropzone quota scan`).\n{}",
        toml::to_string(&raw).map_err(io::Error::other)?
    );
    let name = format!("{user}.usage");
    if durable {
        return crate::atomic_file::replace(dir, &name, text.as_bytes());
    }
    // Only the lock holder writes the record, so one temporary name does.
    let tmp = dir.join(format!(".{name}.part"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))
}

/// The `flock` on a user's `NAME.usage.lock`, held until dropped.
struct RecordLock {
    _file: File,
}

impl RecordLock {
    /// Takes the lock; with `wait`, waits for another holder, else
    /// returns `None` while one holds it.
    fn take(dir: &Path, user: &UserName, wait: bool) -> io::Result<Option<RecordLock>> {
        let (_, path) = paths(dir, user);
        crate::atomic_file::create_private_dir(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let op = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(RecordLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Keeps an account's figures in its user's record (see the module
/// documentation); holds the lock until the account goes.
struct RecordSink {
    dir: PathBuf,
    user: UserName,
    _lock: RecordLock,
}

impl UsageSink for RecordSink {
    fn changed(&self, usage: Usage) {
        if let Err(e) = write_record(&self.dir, &self.user, usage, RecordState::InUse, false) {
            tracing::warn!(user = %self.user, error = %e, "cannot update the usage record");
        }
    }

    fn released(&self, usage: Usage) {
        match write_record(&self.dir, &self.user, usage, RecordState::Clean, true) {
            Ok(()) => {
                tracing::debug!(user = %self.user, bytes = usage.bytes, files = usage.files, "usage saved")
            }
            // The record stays in use: the next login rescans.
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "cannot save the usage record; it will be recomputed at the next login")
            }
        }
    }
}

/// One user's slot: their live account, if any.
type Slot = Arc<Mutex<Weak<QuotaAccount>>>;

/// The server's quota accounts: one per user, shared by all the user's
/// sessions, loaded at their first login and saved when the last session
/// and file are gone.
pub struct Quotas {
    /// The directory of the usage records; `None` on a shared store
    /// (per-node accounts, see the module documentation).
    dir: Option<PathBuf>,
    slots: Mutex<HashMap<UserName, Slot>>,
}

impl Quotas {
    /// Accounts whose records live in `dir` (the key directory).
    pub fn new(dir: PathBuf) -> Self {
        Quotas {
            dir: Some(dir),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Accounts for a store shared by several nodes: no records, each
    /// account starts from a walk of the user's tree (see the module
    /// documentation for what this bounds).
    pub fn per_node() -> Self {
        Quotas {
            dir: None,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a session of a user with `limits` needs an account. With
    /// records, always (usage is kept for `user list` and `df`); on a
    /// shared store only when the user has a limit, since the account
    /// starts from a walk of the user's tree: a user without a quota logs
    /// in without one.
    pub fn counts(&self, limits: &Limits) -> bool {
        self.dir.is_some() || limits.is_limited()
    }

    /// The account of `user`, shared with their other sessions; loaded
    /// from the record (or a scan of `store`, the user's tree, when the
    /// record cannot be trusted) if this server has none for them now.
    /// `limits` gives the user's current limits at each check. Blocks
    /// (file I/O, perhaps a tree walk): call it on a blocking thread.
    pub fn account(
        &self,
        user: &UserName,
        store: &UserStore,
        limits: impl Fn() -> Limits + Send + Sync + 'static,
    ) -> io::Result<Arc<QuotaAccount>> {
        let slot = {
            let mut slots = lock(&self.slots);
            // Forget users with no account, except one being loaded now.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.try_lock().map_or(true, |w| w.strong_count() > 0)
            });
            slots.entry(user.clone()).or_default().clone()
        };
        // One load per user at a time; other users are not held up.
        let mut live = lock(&slot);
        if let Some(account) = live.upgrade() {
            return Ok(account);
        }
        let account = Arc::new(self.load(user, store, limits)?);
        *live = Arc::downgrade(&account);
        Ok(account)
    }

    /// Loads `user`'s account: takes the lock (waiting for a previous
    /// account of this user, still saving, or a scan), then trusts a clean
    /// record or rescans, and marks the record in use.
    fn load(
        &self,
        user: &UserName,
        store: &UserStore,
        limits: impl Fn() -> Limits + Send + Sync + 'static,
    ) -> io::Result<QuotaAccount> {
        let Some(dir) = &self.dir else {
            let usage = store.scan_usage()?;
            tracing::info!(
                user = %user,
                bytes = usage.bytes,
                files = usage.files,
                "usage counted from the shared store for this node's account"
            );
            return Ok(QuotaAccount::new(usage, limits));
        };
        let held = RecordLock::take(dir, user, true)?
            .ok_or_else(|| io::Error::other("usage record lock not taken"))?;
        let usage = match read_record(dir, user) {
            Some(r) if r.state == RecordState::Clean => Usage {
                bytes: r.bytes,
                files: r.files,
            },
            found => {
                let usage = store.scan_usage()?;
                tracing::info!(
                    user = %user,
                    bytes = usage.bytes,
                    files = usage.files,
                    reason = if found.is_some() { "left in use by a server that stopped without saving" } else { "no usable record" },
                    "usage recomputed from the stored files"
                );
                usage
            }
        };
        write_record(dir, user, usage, RecordState::InUse, true)?;
        let sink = RecordSink {
            dir: dir.clone(),
            user: user.clone(),
            _lock: held,
        };
        Ok(QuotaAccount::new(usage, limits).with_sink(Box::new(sink)))
    }
}

/// What [`rescan`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescan {
    /// The tree was walked and the record written clean.
    Scanned(Usage),
    /// A running server holds the user: left alone.
    InUse,
}

/// `dropzone quota scan` for one user: recomputes their usage from
/// `storage` (their tree) and writes the record clean, unless a running
/// server holds the user (see the module documentation).
pub fn rescan(dir: &Path, user: &UserName, storage: &dyn Storage) -> io::Result<Rescan> {
    let Some(_held) = RecordLock::take(dir, user, false)? else {
        return Ok(Rescan::InUse);
    };
    let usage = crate::store::quota::scan_usage(storage)?;
    write_record(dir, user, usage, RecordState::Clean, true)?;
    Ok(Rescan::Scanned(usage))
}

/// `user`'s usage counted now from `backend` (a walk of their tree: sizes
/// from stored lengths, nothing decrypted), for a shared store, where no
/// record is kept (see the module documentation); `None` if the user has
/// no tree. Never creates one.
pub fn counted(backend: &Backend, user: &UserName) -> io::Result<Option<Usage>> {
    if !backend.has_user(user)? {
        return Ok(None);
    }
    let storage = backend.user_storage(user)?;
    crate::store::quota::scan_usage(&*storage).map(Some)
}

/// `user`'s recorded usage and how far to trust it; `None` if there is no
/// record yet (the user has not logged in since quotas came).
pub fn recorded(dir: &Path, user: &UserName) -> io::Result<Option<UsageView>> {
    let Some(record) = read_record(dir, user) else {
        return Ok(None);
    };
    let usage = Usage {
        bytes: record.bytes,
        files: record.files,
    };
    let status = match record.state {
        RecordState::Clean => UsageStatus::Clean,
        RecordState::InUse => match RecordLock::take(dir, user, false)? {
            None => UsageStatus::Live,
            Some(_) => UsageStatus::Stale,
        },
    };
    Ok(Some(UsageView { usage, status }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::storage::{LocalStorage, ObjectPath};

    fn user() -> UserName {
        UserName::parse("alice").unwrap()
    }

    fn store(root: &Path) -> UserStore {
        let storage = Arc::new(LocalStorage::open_root(root).unwrap());
        UserStore::new(storage, Arc::new(crate::keys::DataKey::from_bytes([3; 32])))
    }

    fn put(root: &Path, name: &str, data: &[u8]) {
        use crate::store::OpenOptions;
        let store = store(root);
        let f = store
            .open(
                &ObjectPath::from_components([name]).unwrap(),
                OpenOptions {
                    write: true,
                    create: true,
                    truncate: true,
                    ..OpenOptions::default()
                },
            )
            .unwrap();
        f.write_at(0, data).unwrap();
        f.close().unwrap();
    }

    fn no_limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_first_load_scans_and_a_clean_record_is_trusted() {
        let keks = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        put(data.path(), "a", &[1; 1000]);
        put(data.path(), "b", &[2; 24]);
        let storage = LocalStorage::open_root(data.path()).unwrap();
        let quotas = Quotas::new(keks.path().to_owned());
        let user_store = store(data.path());
        let account = quotas.account(&user(), &user_store, no_limits).unwrap();
        assert_eq!(
            account.usage(),
            Usage {
                bytes: 1024,
                files: 2
            }
        );
        // The same account for a second session.
        let again = quotas.account(&user(), &user_store, no_limits).unwrap();
        assert!(Arc::ptr_eq(&account, &again));
        let view = recorded(keks.path(), &user()).unwrap().unwrap();
        assert_eq!(view.status, UsageStatus::Live);
        assert_eq!(
            rescan(keks.path(), &user(), &storage).unwrap(),
            Rescan::InUse
        );
        account.charge(100).unwrap();
        drop((account, again));
        let view = recorded(keks.path(), &user()).unwrap().unwrap();
        assert_eq!(view.status, UsageStatus::Clean);
        assert_eq!(view.usage.bytes, 1124);
        // Clean: trusted, not rescanned (the tree holds 1024).
        let account = quotas.account(&user(), &user_store, no_limits).unwrap();
        assert_eq!(account.usage().bytes, 1124);
    }

    #[test]
    fn a_record_left_in_use_is_rescanned_and_a_scan_writes_it_clean() {
        let keks = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        put(data.path(), "a", &[1; 10]);
        let storage = LocalStorage::open_root(data.path()).unwrap();
        // A server that died: in use, wrong figures, no lock held.
        let wrong = Usage {
            bytes: 999,
            files: 9,
        };
        write_record(keks.path(), &user(), wrong, RecordState::InUse, true).unwrap();
        let view = recorded(keks.path(), &user()).unwrap().unwrap();
        assert_eq!((view.usage, view.status), (wrong, UsageStatus::Stale));
        let quotas = Quotas::new(keks.path().to_owned());
        let user_store = store(data.path());
        let account = quotas.account(&user(), &user_store, no_limits).unwrap();
        assert_eq!(
            account.usage(),
            Usage {
                bytes: 10,
                files: 1
            }
        );
        drop(account);
        write_record(keks.path(), &user(), wrong, RecordState::InUse, true).unwrap();
        assert_eq!(
            rescan(keks.path(), &user(), &storage).unwrap(),
            Rescan::Scanned(Usage {
                bytes: 10,
                files: 1
            })
        );
        let view = recorded(keks.path(), &user()).unwrap().unwrap();
        assert_eq!(view.status, UsageStatus::Clean);
    }

    #[test]
    fn a_damaged_record_is_rescanned() {
        let keks = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(keks.path().join("alice.usage"), "bytes = \"many\"").unwrap();
        let user_store = store(data.path());
        assert_eq!(recorded(keks.path(), &user()).unwrap(), None);
        let quotas = Quotas::new(keks.path().to_owned());
        let account = quotas.account(&user(), &user_store, no_limits).unwrap();
        assert_eq!(account.usage(), Usage::default());
    }
}
