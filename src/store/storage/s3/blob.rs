//! An open object of [`super::S3Storage`]: ranged reads through a window,
//! and writes as a multipart upload of the object's key.
//!
//! Writes: the encrypted layer writes the header, then records in order
//! (a few batches may land out of order), and rewrites its last partial
//! record in place. The blob keeps the bytes since the last part it sent
//! (its *tail*) in memory; once the tail holds a whole part and a slack of
//! [`SLACK`] written bytes after it, the part is sent. Nothing before the
//! tail can be written again: such a write is refused
//! ([`super::super::Unsupported`]), and [`Blob::write_floor`] tells the
//! layer above where that is so that it refuses before changing anything.
//!
//! A new upload completes at commit (a single PUT if it never filled a
//! part); a stored object opened for writing starts a rewrite at its first
//! write: its records before the last one are copied server-side as the
//! first parts (fetched into the tail instead when they are under
//! [`MIN_PART_SIZE`]: only the last part may be smaller), its last record
//! is read into the tail, and the rewrite completes at `sync`/`publish`
//! with `If-Match` on the version read. An upload that does not complete
//! is aborted (by the sweep if the process dies first). Memory per open
//! object: one tail (a part and the slack), one read window.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{
    MIN_PART_SIZE, Tuning, copy_ranges, file_meta, identity, metadata_pairs, now,
    stored_mode_and_mtime,
};
use crate::aws::s3::{Condition, ObjectInfo, S3Client, S3Error};
use crate::store::format;
use crate::store::storage::{Blob, Kind, Meta, unsupported};
use crate::sync::lock;

/// Written bytes kept in the tail after a part is sent: the last record
/// (rewritten in place) and room for writes that arrive slightly out of
/// order (write-behind batches).
pub(super) const SLACK: usize = 1 << 20;

/// Parts of an upload: S3 allows 10,000. Part sizes double every
/// [`PARTS_PER_SIZE`] parts (up to 16 times the configured size), so that
/// an upload of a few hundred GiB fits with 8 MiB parts.
const MAX_PARTS: u32 = 10_000;
const PARTS_PER_SIZE: u32 = 2_000;

/// A random read fetches at least this much (a sequential one a window).
const SMALL_READ: usize = 256 << 10;

/// The blob shared by a staged upload's [`Blob`] and its commit token.
pub(super) struct BlobHandle(pub(super) Arc<S3Blob>);

/// What [`super::S3Storage::commit`] gets back from a staged upload.
pub(super) struct UploadToken(pub(super) Arc<S3Blob>);

/// An open object (see the module documentation).
pub(super) struct S3Blob {
    client: S3Client,
    key: String,
    tuning: Tuning,
    writable: bool,
    state: Mutex<State>,
}

/// The stored version an open object reads from and rewrites.
#[derive(Clone)]
struct Base {
    etag: String,
    len: u64,
    last_modified: i64,
}

struct State {
    /// The stored version (`None` for a new upload until it commits).
    base: Option<Base>,
    /// Length as the writer sees it.
    len: u64,
    /// The upload in progress, if any.
    upload: Option<Upload>,
    /// The last range fetched, for the reads that follow.
    window: Option<(u64, Bytes)>,
    /// Where the previous read ended: a read there is sequential.
    last_read_end: u64,
    /// Mode and client-set mtime, stored with the next version.
    mode: u32,
    mtime: Option<i64>,
    /// A new upload (committed through its token, not by `publish`).
    staged: bool,
    /// Identity reported by `meta` (fixed while open).
    identity: (u64, u64),
}

/// A multipart upload in progress (created when its first part is sent).
struct Upload {
    id: Option<String>,
    parts: Vec<(u32, String)>,
    /// Stored offsets below this are sent or copied: never written again.
    floor: u64,
    /// Bytes from `floor` on.
    tail: Vec<u8>,
    /// Written ranges at or above `floor` (sorted, disjoint, absolute).
    written: Vec<Range<u64>>,
    /// Bytes `0..copied` are the base's, copied server-side (readable there).
    copied: u64,
    /// Mode and mtime the multipart upload was created with.
    created_with: Option<(u32, Option<i64>)>,
}

impl Upload {
    fn new() -> Self {
        Upload {
            id: None,
            parts: Vec::new(),
            floor: 0,
            tail: Vec::new(),
            written: Vec::new(),
            copied: 0,
            created_with: None,
        }
    }

    /// Puts `data` at `offset` (at or above the floor) into the tail.
    fn put(&mut self, offset: u64, data: &[u8]) {
        let at = (offset - self.floor) as usize;
        if self.tail.len() < at + data.len() {
            self.tail.resize(at + data.len(), 0);
        }
        self.tail[at..at + data.len()].copy_from_slice(data);
        self.mark(offset..offset + data.len() as u64);
    }

    /// Records `r` as written, merging ranges.
    fn mark(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let mut merged = r;
        let mut out = Vec::with_capacity(self.written.len() + 1);
        for w in self.written.drain(..) {
            if w.end < merged.start || w.start > merged.end {
                out.push(w);
            } else {
                merged = merged.start.min(w.start)..merged.end.max(w.end);
            }
        }
        out.push(merged);
        out.sort_by_key(|w| w.start);
        self.written = out;
    }

    /// End of the written run that starts at the floor.
    fn contiguous_end(&self) -> u64 {
        match self.written.first() {
            Some(w) if w.start <= self.floor => w.end,
            _ => self.floor,
        }
    }

    /// Cuts the tail (and what is written) at stored length `len`, or
    /// extends it with zeros.
    fn set_len(&mut self, len: u64) {
        let old_end = self.floor + self.tail.len() as u64;
        self.tail.resize((len - self.floor) as usize, 0);
        for w in &mut self.written {
            w.end = w.end.min(len);
        }
        self.written.retain(|w| !w.is_empty());
        if len > old_end {
            self.mark(old_end..len);
        }
    }

    /// Drops the first `n` bytes of the tail (sent as a part).
    fn advance(&mut self, n: usize) {
        self.tail.drain(..n);
        self.floor += n as u64;
        let floor = self.floor;
        for w in &mut self.written {
            w.start = w.start.max(floor);
        }
        self.written.retain(|w| w.end > floor);
    }
}

/// Where a rewrite of a stored object of `len` bytes must start: its last
/// record (the whole object if it is not a valid layout).
fn last_record_offset(len: u64) -> u64 {
    match format::Layout::from_stored_len(len) {
        Ok(layout) => format::record_offset(layout.chunks - 1),
        Err(_) => len,
    }
}

fn below_floor(offset: u64, floor: u64) -> io::Error {
    unsupported(format!(
        "S3 storage cannot change bytes already sent: offset {offset} is below {floor} \
         (random writes below the end and truncation are refused on S3; \
         write at or after the end, or upload the whole file again)"
    ))
}

fn changed_meanwhile() -> io::Error {
    io::Error::other(
        "the file was replaced on the object store while it was open; nothing was stored",
    )
}

impl S3Blob {
    /// A stored object, described by `info`.
    pub(super) fn existing(
        client: S3Client,
        info: ObjectInfo,
        writable: bool,
        tuning: Tuning,
    ) -> Self {
        let meta = file_meta(&info);
        let (mode, mtime) = stored_mode_and_mtime(&info, meta.permissions);
        S3Blob {
            client,
            key: info.key.clone(),
            tuning,
            writable,
            state: Mutex::new(State {
                base: Some(Base {
                    etag: info.etag.clone(),
                    len: info.size,
                    last_modified: info.last_modified,
                }),
                len: info.size,
                upload: None,
                window: None,
                last_read_end: 0,
                mode,
                mtime,
                staged: false,
                identity: meta.identity,
            }),
        }
    }

    /// A new upload of `key`, invisible until [`S3Blob::commit`].
    pub(super) fn staged(client: S3Client, key: String, tuning: Tuning) -> Self {
        let identity = identity(&key, "");
        S3Blob {
            client,
            key,
            tuning,
            writable: true,
            state: Mutex::new(State {
                base: None,
                len: 0,
                upload: Some(Upload::new()),
                window: None,
                last_read_end: 0,
                mode: super::DEFAULT_FILE_MODE,
                mtime: None,
                staged: true,
                identity,
            }),
        }
    }

    /// The size of part `number` (1-based).
    fn part_len(&self, number: u32) -> usize {
        self.tuning.part_size << ((number - 1) / PARTS_PER_SIZE).min(4)
    }

    /// Starts the multipart upload of `up` if not yet done.
    fn ensure_id(
        &self,
        st_mode: u32,
        st_mtime: Option<i64>,
        up: &mut Upload,
    ) -> io::Result<String> {
        if let Some(id) = &up.id {
            return Ok(id.clone());
        }
        let pairs = metadata_pairs(st_mode, st_mtime);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let id = self.client.create_multipart(&self.key, &refs)?;
        up.id = Some(id.clone());
        up.created_with = Some((st_mode, st_mtime));
        Ok(id)
    }

    /// Starts rewriting the stored object at its first write, at `offset`.
    fn begin_rewrite(&self, st: &mut State, offset: u64) -> io::Result<()> {
        let Some(base) = st.base.clone() else {
            return Err(io::Error::other("no stored version to rewrite"));
        };
        let floor = last_record_offset(base.len);
        let mut up = Upload::new();
        // Only the last part may be under 5 MiB: a shorter unchanged
        // prefix is fetched into the tail instead of copied.
        let from = if floor >= MIN_PART_SIZE as u64 {
            if offset < floor {
                return Err(below_floor(offset, floor));
            }
            let id = self.ensure_id(st.mode, st.mtime, &mut up)?;
            for (number, range) in (1u32..).zip(copy_ranges(floor)) {
                match self.client.upload_part_copy(
                    &self.key,
                    &id,
                    number,
                    &self.key,
                    range,
                    Some(&base.etag),
                ) {
                    Ok(etag) => up.parts.push((number, etag)),
                    Err(e) => {
                        let _ = self.client.abort_multipart(&self.key, &id);
                        return Err(match e {
                            S3Error::PreconditionFailed => changed_meanwhile(),
                            e => e.into(),
                        });
                    }
                }
            }
            up.floor = floor;
            up.copied = floor;
            floor
        } else {
            0
        };
        if base.len > from {
            let data = self
                .client
                .get_range(&self.key, from..base.len, Some(&base.etag));
            match data {
                Ok(data) => up.put(from, &data),
                Err(e) => {
                    if let Some(id) = &up.id {
                        let _ = self.client.abort_multipart(&self.key, id);
                    }
                    return Err(match e {
                        S3Error::PreconditionFailed => changed_meanwhile(),
                        e => e.into(),
                    });
                }
            }
        }
        st.upload = Some(up);
        Ok(())
    }

    /// Sends every whole part the tail holds beyond the slack.
    fn send_parts(&self, st: &mut State) -> io::Result<()> {
        let (mode, mtime, len) = (st.mode, st.mtime, st.len);
        let Some(up) = st.upload.as_mut() else {
            return Ok(());
        };
        loop {
            let number = up.parts.len() as u32 + 1;
            let part = self.part_len(number);
            let needed = up.floor + (part + SLACK) as u64;
            if up.contiguous_end() < needed || len < needed {
                return Ok(());
            }
            if number > MAX_PARTS {
                return Err(io::Error::other(
                    "the file is too large for one S3 multipart upload",
                ));
            }
            let id = self.ensure_id(mode, mtime, up)?;
            let etag = self
                .client
                .upload_part(&self.key, &id, number, &up.tail[..part])?;
            up.parts.push((number, etag));
            up.advance(part);
        }
    }

    /// Completes the upload in progress as the object's new version, under
    /// `cond`; the blob then reads from it. On failure the upload is
    /// aborted: nothing of it is visible.
    fn complete(&self, st: &mut State, cond: Condition) -> io::Result<()> {
        let Some(mut up) = st.upload.take() else {
            return Ok(());
        };
        let result = self.finish_upload(st, &mut up, cond);
        if result.is_err()
            && let Some(id) = &up.id
        {
            let _ = self.client.abort_multipart(&self.key, id);
        }
        let etag = result?;
        st.base = Some(Base {
            etag,
            len: st.len,
            last_modified: now(),
        });
        st.window = None;
        st.staged = false;
        Ok(())
    }

    fn finish_upload(&self, st: &State, up: &mut Upload, cond: Condition) -> io::Result<String> {
        if up.contiguous_end() < st.len {
            return Err(io::Error::other(
                "an upload with bytes never written cannot be stored",
            ));
        }
        let tail_len = (st.len - up.floor) as usize;
        let rewrite = matches!(cond, Condition::IfMatch(_));
        let fail = |e: S3Error| -> io::Error {
            match e {
                S3Error::PreconditionFailed if rewrite => changed_meanwhile(),
                e => e.into(),
            }
        };
        let Some(id) = up.id.clone() else {
            // Never filled a part: one PUT, with the metadata.
            let pairs = metadata_pairs(st.mode, st.mtime);
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            return self
                .client
                .put(&self.key, &up.tail[..tail_len], &refs, cond)
                .map_err(fail);
        };
        if tail_len > 0 {
            let number = up.parts.len() as u32 + 1;
            let etag = self
                .client
                .upload_part(&self.key, &id, number, &up.tail[..tail_len])
                .map_err(fail)?;
            up.parts.push((number, etag));
        }
        let etag = self
            .client
            .complete_multipart(&self.key, &id, &up.parts, cond)
            .map_err(fail)?;
        up.id = None;
        if up.created_with != Some((st.mode, st.mtime)) {
            // A mode or time set after the upload began: copied onto the
            // new version (only if it is still the one just made).
            return self.fix_metadata(st, &etag).or(Ok(etag));
        }
        Ok(etag)
    }

    /// Stores the blob's mode and mtime on the version `etag`.
    fn fix_metadata(&self, st: &State, etag: &str) -> io::Result<String> {
        if st.len > 5 << 30 {
            tracing::warn!(key = %self.key, "mode and times not stored: object over 5 GiB");
            return Ok(etag.to_owned());
        }
        let pairs = metadata_pairs(st.mode, st.mtime);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let result = self.client.copy(
            &self.key,
            &self.key,
            Some(etag),
            Some(&refs),
            Condition::Always,
        );
        result.map_err(|e| {
            tracing::warn!(key = %self.key, error = %e, "mode and times not stored");
            io::Error::from(e)
        })
    }

    /// Commits a new upload (see `Storage::commit`).
    pub(super) fn commit(&self, exclusive: bool) -> io::Result<()> {
        let mut st = lock(&self.state);
        let cond = if exclusive {
            Condition::IfNoneMatch
        } else {
            Condition::Always
        };
        self.complete(&mut st, cond)
    }

    /// Gives up the upload in progress, if any.
    pub(super) fn abort(&self) {
        let mut st = lock(&self.state);
        if let Some(Upload { id: Some(id), .. }) = st.upload.take()
            && let Err(e) = self.client.abort_multipart(&self.key, &id)
        {
            tracing::warn!(key = %self.key, error = %e, "could not abort an S3 upload (the sweep will)");
        }
    }

    /// Reads from the stored version `base`, through the window.
    fn read_base(&self, st: &mut State, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some(base) = st.base.clone() else {
            return Ok(0);
        };
        if let Some((start, data)) = &st.window
            && offset >= *start
            && offset < start + data.len() as u64
        {
            let at = (offset - start) as usize;
            let n = buf.len().min(data.len() - at);
            buf[..n].copy_from_slice(&data[at..at + n]);
            st.last_read_end = offset + n as u64;
            return Ok(n);
        }
        let want = if offset == st.last_read_end && offset > 0 {
            self.tuning.read_window
        } else {
            SMALL_READ
        }
        .max(buf.len());
        let end = base.len.min(offset + want as u64);
        let data = self
            .client
            .get_range(&self.key, offset..end, Some(&base.etag))
            .map_err(|e| match e {
                S3Error::PreconditionFailed => changed_meanwhile(),
                e => e.into(),
            })?;
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        st.last_read_end = offset + n as u64;
        st.window = Some((offset, data));
        Ok(n)
    }
}

impl Drop for S3Blob {
    fn drop(&mut self) {
        // An upload never committed or completed (the handle went without
        // close): aborted on a thread of its own, as this may run where
        // blocking is not allowed; the sweep catches it if this fails.
        let st = match self.state.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(Upload { id: Some(id), .. }) = st.upload.take() {
            let (client, key) = (self.client.clone(), self.key.clone());
            let _ = std::thread::Builder::new()
                .name("s3-abort".into())
                .spawn(move || {
                    if let Err(e) = client.abort_multipart(&key, &id) {
                        tracing::warn!(%key, error = %e, "could not abort an S3 upload (the sweep will)");
                    }
                });
        }
    }
}

impl Blob for BlobHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let blob = &*self.0;
        let mut st = lock(&blob.state);
        if offset >= st.len || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min((st.len - offset) as usize);
        let buf = &mut buf[..n];
        let (floor, copied) = match &st.upload {
            Some(up) => (up.floor, up.copied),
            None => return blob.read_base(&mut st, buf, offset),
        };
        if offset >= floor {
            let Some(up) = &st.upload else {
                return Ok(0);
            };
            let at = (offset - floor) as usize;
            let n = n.min(up.tail.len().saturating_sub(at));
            buf[..n].copy_from_slice(&up.tail[at..at + n]);
            return Ok(n);
        }
        if offset < copied {
            let n = n.min((copied - offset) as usize);
            return blob.read_base(&mut st, &mut buf[..n], offset);
        }
        Err(unsupported(format!(
            "S3 storage cannot read back bytes {offset}.. of an upload in progress: \
             they were sent already"
        )))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let blob = &*self.0;
        if !blob.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let mut st = lock(&blob.state);
        if st.upload.is_none() {
            blob.begin_rewrite(&mut st, offset)?;
        }
        let Some(up) = st.upload.as_mut() else {
            return Err(io::Error::other("no upload in progress"));
        };
        if offset < up.floor {
            return Err(below_floor(offset, up.floor));
        }
        up.put(offset, buf);
        let end = offset + buf.len() as u64;
        st.len = st.len.max(end);
        blob.send_parts(&mut st)
    }

    fn meta(&self) -> io::Result<Meta> {
        let st = lock(&self.0.state);
        let mtime = st.mtime.unwrap_or_else(|| match (&st.base, &st.upload) {
            (Some(base), None) => base.last_modified,
            _ => now(),
        });
        Ok(Meta {
            kind: Kind::File,
            stored_len: st.len,
            permissions: st.mode,
            uid: super::owner(),
            gid: super::group(),
            nlink: 1,
            atime: mtime,
            mtime,
            identity: st.identity,
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let blob = &*self.0;
        if !blob.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let mut st = lock(&blob.state);
        if st.upload.is_none() {
            if len == st.len {
                return Ok(());
            }
            let from = len.min(st.len);
            blob.begin_rewrite(&mut st, from)?;
        }
        let Some(up) = st.upload.as_mut() else {
            return Err(io::Error::other("no upload in progress"));
        };
        if len < up.floor {
            return Err(below_floor(len, up.floor));
        }
        up.set_len(len);
        st.len = len;
        blob.send_parts(&mut st)
    }

    fn sync(&self) -> io::Result<()> {
        // A new upload is made durable by its commit; a rewrite now.
        self.publish()
    }

    fn set_permissions(&self, mode: u32) -> io::Result<()> {
        let blob = &*self.0;
        let mut st = lock(&blob.state);
        st.mode = mode & super::MODE_BITS;
        blob.store_metadata_now(&mut st)
    }

    fn set_times(&self, _atime: i64, mtime: i64) -> io::Result<()> {
        let blob = &*self.0;
        let mut st = lock(&blob.state);
        st.mtime = Some(mtime);
        blob.store_metadata_now(&mut st)
    }

    fn write_floor(&self) -> Option<u64> {
        let blob = &*self.0;
        if !blob.writable {
            return None;
        }
        let st = lock(&blob.state);
        match (&st.upload, &st.base) {
            (Some(up), _) => Some(up.floor),
            (None, Some(base)) => {
                let floor = last_record_offset(base.len);
                Some(if floor >= MIN_PART_SIZE as u64 {
                    floor
                } else {
                    0
                })
            }
            (None, None) => None,
        }
    }

    fn publish(&self) -> io::Result<()> {
        let blob = &*self.0;
        let mut st = lock(&blob.state);
        if st.staged || st.upload.is_none() {
            return Ok(());
        }
        let Some(etag) = st.base.as_ref().map(|b| b.etag.clone()) else {
            return Ok(());
        };
        blob.complete(&mut st, Condition::IfMatch(etag))
    }
}

impl S3Blob {
    /// A mode or time change: kept for the upload in progress (stored with
    /// it), or copied onto the stored version now.
    fn store_metadata_now(&self, st: &mut State) -> io::Result<()> {
        if st.upload.is_some() {
            return Ok(());
        }
        let Some(base) = st.base.clone() else {
            return Ok(());
        };
        let etag = self
            .fix_metadata(st, &base.etag)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => changed_meanwhile(),
                _ => e,
            })?;
        if let Some(b) = st.base.as_mut() {
            b.etag = etag;
        }
        Ok(())
    }
}
