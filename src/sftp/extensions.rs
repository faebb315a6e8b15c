//! OpenSSH's SFTP extensions and the other common ones.

use std::time::Instant;

use russh_sftp::protocol::{Extended, ExtendedReply, File, Name, Packet};

use super::status::SftpError;
use super::wire::{Reader, Writer};
use super::{MAX_PACKET_LEN, MAX_READ_WRITE_LEN, Session, ok};
use crate::access::Permission;
use crate::jail;
use crate::observe::EventKind;
use crate::outcome::outcome_of;
use crate::store::storage::{ObjectPath, SpaceInfo};
use crate::store::{EncryptedFile, StoreError};

/// Extensions announced in the VERSION reply, with OpenSSH's versions.
pub(super) const ADVERTISED: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("lsetstat@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
    ("copy-data", "1"),
    ("home-directory", "1"),
    ("users-groups-by-id@openssh.com", "1"),
];

/// Extensions that act on one file handle and so go to its worker.
pub(super) fn is_handle_request(name: &str) -> bool {
    matches!(name, "fsync@openssh.com" | "fstatvfs@openssh.com")
}

/// The handle named first in a handle extension's payload.
pub(super) fn handle_of(e: &Extended) -> Option<String> {
    Reader::new(&e.data).string().ok()
}

/// A handle extension, run by the handle's worker; `None` means plain OK.
pub(super) fn handle_extension(
    session: &Session,
    id: u32,
    file: &EncryptedFile,
    request: &str,
    data: &[u8],
) -> Result<Option<Packet>, SftpError> {
    let mut r = Reader::new(data);
    let _handle = r.string()?;
    match request {
        "fsync@openssh.com" => {
            file.sync()?;
            Ok(None)
        }
        "fstatvfs@openssh.com" => {
            let space = session.store.space(&ObjectPath::root())?;
            Ok(Some(statvfs_reply(id, &space)))
        }
        other => Err(SftpError::Unsupported(other.to_owned())),
    }
}

/// Every other extension.
pub(super) fn path_extension(session: &Session, e: Extended) -> Result<Packet, SftpError> {
    let id = e.id;
    let mut r = Reader::new(&e.data);
    let store = &session.store;
    match e.request.as_str() {
        "posix-rename@openssh.com" => {
            let (from, to) = (r.string()?, r.string()?);
            session.audited_rename(&from, &to, true)?;
            Ok(ok(id))
        }
        "hardlink@openssh.com" => {
            let started = Instant::now();
            let existing = jail::resolve(&r.string()?)?;
            let link = jail::resolve(&r.string()?)?;
            // A hard link is a link: it needs `symlink`, as SYMLINK does.
            let linked = session
                .check(&[Permission::Symlink])
                .and_then(|()| store.hard_link(&existing, &link).map_err(SftpError::from));
            let shown_existing = existing.to_client_string();
            if let Err(e) = &linked {
                // A hard link to a symlink that would climb out is refused.
                session.refusal_notice(&shown_existing, e);
            }
            session.events.operation(
                EventKind::Link,
                &link.to_client_string(),
                Some(&shown_existing),
                started.elapsed(),
                outcome_of(&linked),
            );
            linked?;
            Ok(ok(id))
        }
        "statvfs@openssh.com" => {
            let path = jail::resolve(&r.string()?)?;
            let space = store.space(&path)?;
            Ok(statvfs_reply(id, &space))
        }
        "lsetstat@openssh.com" => {
            let raw = r.string()?;
            let attrs = r.attrs()?;
            session.audited(EventKind::Setstat, &raw, |path| {
                session.set_stat(path, &attrs, false)
            })?;
            Ok(ok(id))
        }
        "limits@openssh.com" => {
            let data = Writer::default()
                .u64(u64::from(MAX_PACKET_LEN))
                .u64(u64::from(MAX_READ_WRITE_LEN))
                .u64(u64::from(MAX_READ_WRITE_LEN))
                // The connection's cap: its other channels share it, so a
                // client may meet the refusal before this many.
                .u64(session.max_handles as u64)
                .finish();
            Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
        }
        "expand-path@openssh.com" => {
            let raw = r.string()?;
            // The user's home is "/": "~" and "~/x" expand to it.
            let expanded = match raw.strip_prefix('~') {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
                Some(_) => return Err(SftpError::Unsupported("~user expansion".into())),
                None => raw,
            };
            let path = jail::resolve(&expanded)?.to_client_string();
            Ok(Packet::Name(Name {
                id,
                files: vec![File::dummy(path)],
            }))
        }
        "home-directory" => {
            let name = r.string()?;
            if !name.is_empty() && name != session.user.as_str() {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound).into());
            }
            Ok(Packet::Name(Name {
                id,
                files: vec![File::dummy("/")],
            }))
        }
        "users-groups-by-id@openssh.com" => {
            let uids = r.bytes()?;
            let gids = r.bytes()?;
            let own_uid = rustix::process::getuid().as_raw();
            let own_gid = rustix::process::getgid().as_raw();
            let names = |ids: &[u8], own: u32| -> Result<Vec<u8>, SftpError> {
                let mut ids = Reader::new(ids);
                let mut out = Writer::default();
                while let Ok(n) = ids.u32() {
                    let name = if n == own { session.user.as_str() } else { "" };
                    out = out.bytes(name.as_bytes());
                }
                Ok(out.finish())
            };
            let data = Writer::default()
                .bytes(&names(uids, own_uid)?)
                .bytes(&names(gids, own_gid)?)
                .finish();
            Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
        }
        "copy-data" => {
            let read_handle = r.string()?;
            let read_offset = r.u64()?;
            let read_len = r.u64()?;
            let write_handle = r.string()?;
            let write_offset = r.u64()?;
            let started = Instant::now();
            let (src, src_path) = session
                .handles
                .file_and_path(&read_handle)
                .ok_or(SftpError::BadHandle)?;
            let (dst, dst_path) = session
                .handles
                .file_and_path(&write_handle)
                .ok_or(SftpError::BadHandle)?;
            // Both handles were allowed when opened; reading is checked
            // again, as a READ would be if it were a path request.
            let copied = session
                .check(&[Permission::Download])
                .inspect_err(|e| session.refusal_notice(&src_path, e))
                .and_then(|()| copy_data(&src, read_offset, read_len, &dst, write_offset));
            session.events.operation(
                EventKind::Copy,
                &src_path,
                Some(&dst_path),
                started.elapsed(),
                outcome_of(&copied),
            );
            copied?;
            Ok(ok(id))
        }
        other => Err(SftpError::Unsupported(other.to_owned())),
    }
}

/// copy-data: copies `len` bytes (0: to the end) of `src` from `from` to
/// `dst` at `to`.
///
/// The end of the source is fixed when the copy starts, so a copy into the
/// same file cannot chase its own writes; ranges that overlap in one file
/// are refused (OpenSSH's sftp-server refuses every copy within one file;
/// here only the overlapping ones, whose result would depend on the order
/// of the steps). A copy that would grow `dst` past the store's size limit
/// is refused before anything is copied. The copy goes in steps of one
/// chunk and stops, with an error, once the session ends or the server
/// stops; what was copied by then stays.
fn copy_data(
    src: &EncryptedFile,
    from: u64,
    len: u64,
    dst: &EncryptedFile,
    to: u64,
) -> Result<(), SftpError> {
    let src_end = src.size();
    let end = if len == 0 {
        src_end
    } else {
        from.saturating_add(len).min(src_end)
    };
    let count = end.saturating_sub(from);
    if count == 0 {
        return Ok(());
    }
    if dst.same_file(src) && from < to.saturating_add(count) && to < end {
        return Err(StoreError::InvalidArgument(
            "copy-data source and destination overlap in the same file",
        )
        .into());
    }
    dst.check_growth(to.checked_add(count))?;
    let step = crate::store::format::CHUNK_SIZE as u64;
    let mut done = 0;
    while done < count {
        dst.check_stop()?;
        let data = src.read_at(from + done, (count - done).min(step) as usize)?;
        if data.is_empty() {
            // The source was cut short meanwhile (another handle).
            break;
        }
        dst.write_at(to + done, &data)?;
        done += data.len() as u64;
    }
    Ok(())
}

fn statvfs_reply(id: u32, s: &SpaceInfo) -> Packet {
    let data = Writer::default()
        .u64(s.block_size)
        .u64(s.fragment_size)
        .u64(s.blocks)
        .u64(s.blocks_free)
        .u64(s.blocks_avail)
        .u64(s.files)
        .u64(s.files_free)
        .u64(s.files_avail)
        .u64(s.fsid)
        .u64(s.flags)
        .u64(s.name_max)
        .finish();
    Packet::ExtendedReply(ExtendedReply { id, data })
}
