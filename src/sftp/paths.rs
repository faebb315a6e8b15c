//! Requests on paths: OPEN and OPENDIR (which create handles) and READDIR's
//! batches, STAT and LSTAT, SETSTAT, REMOVE, MKDIR, RMDIR, REALPATH,
//! RENAME, READLINK, SYMLINK, and the path extensions (`super::extensions`).
//!
//! Every client path goes through [`crate::jail`] first. A request runs on
//! the session's thread, or on a blocking thread when its work has no bound
//! ([`work_has_no_bound`]); changes are reported as events with the path as
//! the user sees it ([`Session::audited`]). A handle takes its place under
//! the caps before anything is opened ([`Session::charge_handle`]); an open
//! file is then run by a worker of its own (`super::worker`). Before any of
//! that, each request passes the user's permissions ([`Session::permit`];
//! the map from requests to permissions is in [`crate::access`]).

use std::sync::Arc;
use std::time::Instant;

use russh_sftp::protocol::{
    Attrs, File, FileAttributes, Handle, Name, OpenFlags, Packet, StatusCode,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::handles::DirListing;
use super::status::SftpError;
use super::{HANDLE_QUEUE, Session, attrs, budget, extensions, ok, status, worker};
use crate::access::Permission;
use crate::jail;
use crate::observe::EventKind;
use crate::outcome::outcome_of;
use crate::store::storage::{Kind, ObjectPath};
use crate::store::{Attributes, OpenOptions};

/// Most entries per READDIR reply (OpenSSH's sftp-server sends 100); each
/// READDIR reads at most this many from the directory.
pub(super) const READDIR_BATCH: usize = 128;
/// Most bytes of entries per READDIR reply: with 255-byte names (and a long
/// name of about as much again) a reply stops near 100 entries, a quarter
/// of the 256 KiB a client accepts.
pub(super) const READDIR_REPLY_BYTES: usize = 64 * 1024;

impl Session {
    /// Requests that name paths (and OPEN/OPENDIR, which create handles).
    pub(super) fn path_request(self: &Arc<Self>, packet: Packet) -> Result<Packet, SftpError> {
        let store = &self.store;
        match packet {
            Packet::Open(o) => self.open(o.id, &o.filename, o.pflags, &o.attrs),
            Packet::OpenDir(o) => {
                let path = jail::resolve(&o.path)?;
                self.permit(&path, &[Permission::List])?;
                let listing = self.open_dir(path)?;
                let handle = self.handles.add_dir(listing);
                Ok(Packet::Handle(Handle { id: o.id, handle }))
            }
            Packet::Lstat(s) => self.stat_reply(s.id, &jail::resolve(&s.path)?, false),
            Packet::Stat(s) => self.stat_reply(s.id, &jail::resolve(&s.path)?, true),
            Packet::SetStat(s) => {
                self.audited(EventKind::Setstat, &s.path, |path| {
                    self.set_stat(path, &s.attrs, true)
                })?;
                Ok(ok(s.id))
            }
            Packet::Remove(r) => {
                self.audited(EventKind::Remove, &r.filename, |path| {
                    self.permit(path, &[Permission::Delete])?;
                    Ok(store.remove(path)?)
                })?;
                Ok(ok(r.id))
            }
            Packet::MkDir(m) => {
                self.audited(EventKind::Mkdir, &m.path, |path| {
                    self.permit(path, &[Permission::Mkdir])?;
                    Ok(store.mkdir(path, m.attrs.permissions.map(client_mode))?)
                })?;
                Ok(ok(m.id))
            }
            Packet::RmDir(r) => {
                self.audited(EventKind::Rmdir, &r.path, |path| {
                    if path.is_root() {
                        return Err(std::io::Error::from_raw_os_error(libc::EBUSY).into());
                    }
                    self.permit(path, &[Permission::Rmdir])?;
                    Ok(store.rmdir(path)?)
                })?;
                Ok(ok(r.id))
            }
            Packet::RealPath(r) => {
                let path = jail::resolve(&r.path)?.to_client_string();
                Ok(Packet::Name(Name {
                    id: r.id,
                    files: vec![File::dummy(path)],
                }))
            }
            Packet::Rename(r) => {
                // Like OpenSSH's sftp-server, plain RENAME never replaces an
                // existing target; posix-rename@openssh.com does.
                self.audited_rename(&r.oldpath, &r.newpath, false)?;
                Ok(ok(r.id))
            }
            Packet::ReadLink(r) => {
                let target = store.read_link(&jail::resolve(&r.path)?)?;
                Ok(Packet::Name(Name {
                    id: r.id,
                    files: vec![File::dummy(target)],
                }))
            }
            Packet::Symlink(s) => {
                // OpenSSH sends the target first, contrary to the draft; every
                // common client follows OpenSSH, so the fields are swapped.
                let (target, link) = (s.linkpath, s.targetpath);
                let started = Instant::now();
                let link = jail::resolve(&link)?;
                let shown = link.to_client_string();
                let made = self
                    .check(&[Permission::Symlink])
                    .and_then(|()| jail::symlink_target(&target).map_err(SftpError::from))
                    .and_then(|target| Ok(store.symlink(&target, &link)?));
                if let Err(e) = &made {
                    self.refusal_notice(&shown, e);
                }
                let outcome = outcome_of(&made);
                self.events.operation(
                    EventKind::Link,
                    &shown,
                    Some(&target),
                    started.elapsed(),
                    outcome,
                );
                made?;
                Ok(ok(s.id))
            }
            Packet::Extended(e) => self.extended(e),
            other => {
                debug!(?other, "unexpected packet from client");
                Err(SftpError::BadMessage)
            }
        }
    }

    /// Runs a request on one path and reports it as a `kind` event, with
    /// the path as the user sees it (as given, if the jail refused it).
    pub(super) fn audited(
        &self,
        kind: EventKind,
        raw: &str,
        op: impl FnOnce(&ObjectPath) -> Result<(), SftpError>,
    ) -> Result<(), SftpError> {
        let started = Instant::now();
        let path = jail::resolve(raw);
        let shown = shown_path(&path, raw);
        let result = path.map_err(SftpError::from).and_then(|p| op(&p));
        self.events
            .operation(kind, &shown, None, started.elapsed(), outcome_of(&result));
        result
    }

    /// A rename (posix-rename@openssh.com with `replace`), reported.
    pub(super) fn audited_rename(
        &self,
        raw_from: &str,
        raw_to: &str,
        replace: bool,
    ) -> Result<(), SftpError> {
        let started = Instant::now();
        let (from, to) = (jail::resolve(raw_from), jail::resolve(raw_to));
        let (shown_from, shown_to) = (shown_path(&from, raw_from), shown_path(&to, raw_to));
        let result = match (from, to) {
            (Ok(from), Ok(to)) => self
                .rename_permitted(&to, replace)
                .and_then(|replace| self.store.rename(&from, &to, replace).map_err(Into::into)),
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
        };
        if let Err(e) = &result {
            self.refusal_notice(&shown_from, e);
        }
        self.events.operation(
            EventKind::Rename,
            &shown_from,
            Some(&shown_to),
            started.elapsed(),
            outcome_of(&result),
        );
        result
    }

    /// Checks that the user has every permission in `needed` now; a refusal
    /// is told on stderr with the permission that was missing.
    pub(super) fn permit(&self, path: &ObjectPath, needed: &[Permission]) -> Result<(), SftpError> {
        let checked = self.check(needed);
        if let Err(e) = &checked {
            self.refusal_notice(&path.to_client_string(), e);
        }
        checked
    }

    /// [`Session::permit`] without the notice, for requests that tell
    /// every refusal themselves.
    pub(super) fn check(&self, needed: &[Permission]) -> Result<(), SftpError> {
        Ok(self.access.check(needed)?)
    }

    /// Whether a rename onto `to` is allowed, and whether it may then
    /// replace an existing `to` (`replace`, posix-rename): that needs
    /// `overwrite` as well, and without it the rename never replaces, so a
    /// target made meanwhile is not lost either.
    fn rename_permitted(&self, to: &ObjectPath, replace: bool) -> Result<bool, SftpError> {
        self.check(&[Permission::Rename])?;
        if !replace || self.access.allows(Permission::Overwrite) {
            return Ok(replace);
        }
        if self.store.stat(to, false).is_ok() {
            self.check(&[Permission::Overwrite])?;
        }
        Ok(false)
    }

    /// The permissions an OPEN needs: `download` to read; to write,
    /// `overwrite` if the file exists, else `upload`. The existence check
    /// is skipped when both are granted; when `overwrite` is not, a file
    /// to be created is created exclusively, so that one made meanwhile
    /// (another session) is not replaced.
    fn permit_open(&self, path: &ObjectPath, opts: &mut OpenOptions) -> Result<(), SftpError> {
        if opts.read || !opts.write {
            self.permit(path, &[Permission::Download])?;
        }
        if !opts.write {
            return Ok(());
        }
        let exists = || match self.store.stat(path, true) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(SftpError::from(e)),
        };
        match self.access.check_write(exists) {
            Ok(create_only) => {
                opts.exclusive |= create_only && opts.create;
                Ok(())
            }
            Err(e) => {
                self.refusal_notice(&path.to_client_string(), &e);
                Err(e)
            }
        }
    }

    /// OPEN: a handle for writing is an upload, for reading only a
    /// download; one that cannot be opened is reported at once.
    fn open(
        self: &Arc<Self>,
        id: u32,
        filename: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Packet, SftpError> {
        let kind = if flags.contains(OpenFlags::WRITE) {
            EventKind::Upload
        } else {
            EventKind::Download
        };
        let started = Instant::now();
        let opened = self.open_handle(id, filename, flags, attrs, kind);
        if opened.is_err() {
            let shown = shown_path(&jail::resolve(filename), filename);
            self.events
                .transfer(kind, &shown, 0, started, outcome_of(&opened));
        }
        opened
    }

    /// Opens the file and starts its worker (`super::worker`);
    /// [`Session::open`] reports a failure.
    fn open_handle(
        self: &Arc<Self>,
        id: u32,
        filename: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
        kind: EventKind,
    ) -> Result<Packet, SftpError> {
        let path = jail::resolve(filename)?;
        if path.is_root() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR).into());
        }
        let client_path = path.to_client_string();
        let mut opts = OpenOptions {
            read: flags.contains(OpenFlags::READ),
            write: flags.contains(OpenFlags::WRITE),
            append: flags.contains(OpenFlags::APPEND),
            create: flags.contains(OpenFlags::CREATE),
            truncate: flags.contains(OpenFlags::TRUNCATE),
            exclusive: flags.contains(OpenFlags::EXCLUDE),
            mode: attrs.permissions.map(client_mode),
        };
        self.permit_open(&path, &mut opts)?;
        // The handle's place first: a refused one opens nothing.
        let charge = Arc::new(self.charge_handle()?);
        let file = match self.store.open(&path, opts) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                self.notice_for(&client_path, &e);
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel(HANDLE_QUEUE);
        let handle = self
            .handles
            .add_file(tx, file.clone(), &client_path, charge.clone());
        let transfer = self.events.transfer_started(kind, client_path.clone());
        self.workers.spawn(worker::run_worker(
            self.clone(),
            file,
            client_path,
            rx,
            transfer,
            charge,
        ));
        Ok(Packet::Handle(Handle { id, handle }))
    }

    /// The ATTRS reply for `path`: STAT follows a final symlink (`follow`),
    /// LSTAT does not.
    pub(super) fn stat_reply(
        &self,
        id: u32,
        path: &ObjectPath,
        follow: bool,
    ) -> Result<Packet, SftpError> {
        let a = self.store.stat(path, follow)?;
        Ok(Packet::Attrs(Attrs {
            id,
            attrs: attrs::to_sftp(&a),
        }))
    }

    /// SETSTAT (`follow`) or lsetstat@openssh.com.
    pub(super) fn set_stat(
        &self,
        path: &ObjectPath,
        a: &FileAttributes,
        follow: bool,
    ) -> Result<(), SftpError> {
        self.permit(path, &setstat_needs(a))?;
        let result = self.apply_stat(path, a, follow);
        if let Err(e) = &result {
            self.refusal_notice(&path.to_client_string(), e);
        }
        result
    }

    /// SETSTAT's changes to `path`: its size, its permissions, its times.
    fn apply_stat(
        &self,
        path: &ObjectPath,
        a: &FileAttributes,
        follow: bool,
    ) -> Result<(), SftpError> {
        refuse_root_change(path, a)?;
        let current = self.store.stat(path, follow)?;
        check_owner(a, &current)?;
        if let Some(size) = a.size {
            if current.kind != Kind::File {
                return Err(std::io::Error::from_raw_os_error(libc::EISDIR).into());
            }
            if let Err(e) = self.store.set_size(path, size) {
                self.notice_for(&path.to_client_string(), &e);
                return Err(e.into());
            }
        }
        if let Some(p) = a.permissions {
            if current.kind == Kind::Symlink {
                return Err(SftpError::Unsupported("permissions of a symlink".into()));
            }
            self.store.set_permissions(path, client_mode(p))?;
        }
        if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
            if current.kind == Kind::Symlink {
                return Err(SftpError::Unsupported("times of a symlink".into()));
            }
            self.store.set_times(path, i64::from(at), i64::from(mt))?;
        }
        Ok(())
    }

    /// A place under the connection's, the user's and the server's handle
    /// caps, or the refusal that names the cap reached.
    fn charge_handle(&self) -> Result<budget::HandleCharge, SftpError> {
        self.budget.charge_handle().map_err(|scope| {
            debug!(user = %self.user, %scope, "handle refused: too many open files");
            // OpenSSH's client shows only "Failure" for the status reply.
            if !self
                .told_handle_cap
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let _ = self.notices.try_send(format!(
                    "dropzone: too many open files for {scope}: close some before opening more\n"
                ));
                // The server's own cap is the operator's business: the
                // open-files limit is too low for the load (once per
                // channel, as the notice).
                if scope == budget::Scope::Server {
                    warn!(user = %self.user, "handle refused: the server's open handles are at the cap the open-files limit allows");
                }
            }
            SftpError::TooManyHandles(scope)
        })
    }

    /// OPENDIR: the directory opened for reading in batches, with `.` and
    /// `..` to send first.
    fn open_dir(&self, path: ObjectPath) -> Result<DirListing, SftpError> {
        let charge = self.charge_handle()?;
        // Opened first: a path that is not a directory fails here.
        let stream = self.store.open_dir(&path)?;
        let here = self.store.stat(&path, true)?;
        let parent = self.store.stat(&path.parent(), true)?;
        let first = [(".", &here), ("..", &parent)]
            .into_iter()
            .map(|(name, a)| self.dir_entry(name.to_owned(), a))
            .collect();
        Ok(DirListing::new(path, stream, first, charge))
    }

    /// One entry of a NAME reply to READDIR.
    fn dir_entry(&self, name: String, a: &Attributes) -> File {
        let now = crate::store::storage::unix_seconds(std::time::SystemTime::now());
        File {
            longname: attrs::long_name(&name, a, self.user.as_str(), now),
            attrs: attrs::to_sftp(a),
            filename: name,
        }
    }

    /// READDIR: the next entries, at most [`READDIR_BATCH`] of them and
    /// [`READDIR_REPLY_BYTES`] of names, read from the directory now.
    pub(super) fn readdir_reply(&self, id: u32, dir: &DirListing) -> Result<Packet, SftpError> {
        self.permit(&dir.path, &[Permission::List])?;
        let mut state = dir.state();
        let wanted = READDIR_BATCH.saturating_sub(state.pending.len());
        if wanted > 0 {
            let batch = state.stream.next_batch(wanted)?;
            for (name, a) in batch {
                let entry = self.dir_entry(name, &a);
                state.pending.push_back(entry);
            }
        }
        let mut files = Vec::new();
        let mut bytes = 0;
        while let Some(entry) = state.pending.front() {
            // The entry as encoded: two strings and at most 32 bytes of
            // attributes (no extended ones are sent).
            let size = 8 + entry.filename.len() + entry.longname.len() + 32;
            if !files.is_empty() && bytes + size > READDIR_REPLY_BYTES {
                break;
            }
            bytes += size;
            files.extend(state.pending.pop_front());
        }
        Ok(if files.is_empty() {
            status(id, StatusCode::Eof, "End of file")
        } else {
            Packet::Name(Name { id, files })
        })
    }

    /// A path extension (`super::extensions`).
    pub(super) fn extended(
        self: &Arc<Self>,
        e: russh_sftp::protocol::Extended,
    ) -> Result<Packet, SftpError> {
        extensions::path_extension(self, e)
    }
}

/// Whether a path request's work has no fixed bound, so that it runs on a
/// blocking thread: SETSTAT may extend a file by gigabytes, an extension
/// may copy one, an OPEN for writing without TRUNC may copy one (when
/// uploads are scanned, the copy is what the scanner sees at close). An
/// OPENDIR reads no entry yet (each READDIR reads a bounded batch, on a
/// blocking thread of its own).
pub(super) fn work_has_no_bound(packet: &Packet) -> bool {
    match packet {
        // RENAME and SYMLINK check symlinks against the real tree, and a
        // directory's rename walks its subtree (a bounded walk, but a walk).
        Packet::SetStat(_) | Packet::Extended(_) | Packet::Rename(_) | Packet::Symlink(_) => true,
        Packet::Open(o) => {
            o.pflags.contains(OpenFlags::WRITE) && !o.pflags.contains(OpenFlags::TRUNCATE)
        }
        _ => false,
    }
}

/// The permissions a SETSTAT (or FSETSTAT) needs: `overwrite` to change
/// the size, `chmod` to change the mode, times or owner.
pub(super) fn setstat_needs(a: &FileAttributes) -> Vec<Permission> {
    let mut needed = Vec::new();
    if a.size.is_some() {
        needed.push(Permission::Overwrite);
    }
    let other = a.permissions.is_some()
        || a.atime.is_some()
        || a.mtime.is_some()
        || a.uid.is_some()
        || a.gid.is_some();
    if other {
        needed.push(Permission::Chmod);
    }
    needed
}

/// A path for events: as the jail normalised it, or as the client sent it.
fn shown_path(resolved: &Result<ObjectPath, jail::JailError>, raw: &str) -> String {
    match resolved {
        Ok(p) => p.to_client_string(),
        Err(_) => raw.to_owned(),
    }
}

/// The permission bits a client may set: setuid, setgid and sticky are
/// dropped, so that no client-made file carries them on the host.
pub(super) fn client_mode(mode: u32) -> u32 {
    mode & 0o777
}

/// The user's root is the server's, not the user's, to change: a client
/// that could chmod it (to 0 or 0777) or set its times or size could lock
/// itself out or open its files to other host users. A link to the root is
/// caught by the store, which compares what it resolved with the root.
fn refuse_root_change(path: &ObjectPath, a: &FileAttributes) -> Result<(), SftpError> {
    let changes = a.size.is_some() || a.permissions.is_some() || a.atime.is_some();
    if path.is_root() && changes {
        return Err(SftpError::Store(crate::store::StoreError::Io(
            crate::store::storage::refused("the root of your directory cannot be changed"),
        )));
    }
    Ok(())
}

/// A request to change owner or group is refused unless it changes nothing.
pub(super) fn check_owner(a: &FileAttributes, current: &Attributes) -> Result<(), SftpError> {
    let uid_change = a.uid.is_some_and(|u| u != current.uid);
    let gid_change = a.gid.is_some_and(|g| g != current.gid);
    if uid_change || gid_change {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Permission as P;

    #[test]
    fn setstat_needs_overwrite_for_size_and_chmod_for_the_rest() {
        let size = FileAttributes {
            size: Some(0),
            ..FileAttributes::empty()
        };
        assert_eq!(setstat_needs(&size), [P::Overwrite]);
        let mode = FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::empty()
        };
        assert_eq!(setstat_needs(&mode), [P::Chmod]);
        let times = FileAttributes {
            atime: Some(1),
            mtime: Some(2),
            size: Some(3),
            ..FileAttributes::empty()
        };
        assert_eq!(setstat_needs(&times), [P::Overwrite, P::Chmod]);
        assert!(setstat_needs(&FileAttributes::empty()).is_empty());
    }
}
