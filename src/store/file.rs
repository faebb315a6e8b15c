//! A random-access encrypted file on top of a [`Blob`].
//!
//! One chunk of plaintext is cached per open file: sequential writes fill it
//! and it is encrypted once when the writer moves on, and sequential reads
//! decrypt each chunk once.
//!
//! To use more than one core, sequential access is pipelined through the
//! crate's crypto thread pool: full chunks the writer leaves behind are
//! gathered into batches of [`BATCH`], and a batch is encrypted (its chunks
//! side by side, see [`format::encode_chunks`]) and written by a worker
//! while the caller fills the next one (at most [`WRITE_BEHIND`] batches
//! at a time); a sequential reader gets every other chunk decrypted by a
//! worker while it decrypts the one before. Anything else (a read from
//! disk, a final chunk, a truncation, a sync) first sends off and waits for
//! the writes in flight, so their order on disk is the same as without the
//! pipeline. Memory per open file stays bounded by a few batches whatever
//! the file size.
//!
//! On-disk invariants, outside of an operation in progress:
//! - every record except the last holds a full chunk and is not final;
//! - the last record is marked final and holds the tail;
//! - the only exception is the cached chunk when dirty: its record (and, if
//!   it is the new last chunk, the end of the file) is written on flush.
//!
//! A crash between two record writes leaves a file whose damage the MACs
//! reveal (a chunk marked final that is not last, or a last chunk that is not
//! marked final), never silently wrong data.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use super::bounds::Bounds;
use super::format::{
    self, CHUNK_SIZE, FileId, FileKeys, FormatError, HEADER_LEN, LEN_FIELD, Layout,
};
use super::journal::{Journal, JournalTarget};
use super::pool::{self, Pending, Place, Places};
use super::storage::{Blob, Meta};
use crate::store::StoreError;

/// Largest plaintext size accepted: 1 TiB. Every byte of a file, including
/// a gap written past its end, is stored encrypted (there are no sparse
/// files), so a write at an absurd offset must fail instead of filling the
/// disk; the cap also keeps every record offset far from overflow. A store
/// may set a lower limit (`UserStore::with_max_file_size`, `[sftp] max_file_size`).
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Full chunks encrypted and written together by one pool job: as many as
/// AES-NI encrypts side by side, and one hand-off to a worker for all of
/// them instead of one each.
pub const BATCH: usize = 8;

/// Batches being encrypted and written behind the writer, per open file:
/// two keep the pool's workers busy while the caller fills the next batch,
/// and bound the memory a fast writer can pin (these two and the one being
/// gathered). Fewer while the process has as many write-behind batches as
/// its cap (two per crypto worker) allows.
pub const WRITE_BEHIND: usize = 2;

/// Write-behind batches in flight in the whole process: two per worker of
/// the crypto pool. Each holds [`BATCH`] chunks and their records (about
/// 1 MiB). A writer that finds no place encrypts and writes its batch on
/// its own thread: with that many batches queued every core has work, and
/// more would only hold memory (many uploads at once on few cores).
pub(super) static WRITE_BEHIND_JOBS: Places = Places::per_worker(2);

/// Chunks one read-ahead job reads and decrypts: their records lie end to
/// end on disk, so one read fetches them all, and one hand-off to a worker
/// serves about one full-size SFTP READ (255 KiB).
pub const READ_BATCH: usize = 4;

/// Read-ahead jobs in flight ahead of a sequential reader: with two, the
/// next batch is usually decrypted before the reader reaches it, so the
/// reader rarely sleeps waiting for a worker and a worker rarely sleeps
/// waiting for work.
const READ_AHEAD: usize = 2;

/// Read-ahead jobs in flight or waiting to be read, in the whole process:
/// four per worker of the crypto pool. Each holds up to [`READ_BATCH`]
/// chunks and their records (about 0.5 MiB), so read-ahead memory is
/// bounded however many files are open; past that, readers decrypt on
/// their own thread. A job's place is given back when the reader has taken
/// or dropped all of its chunks, or, for a job the reader gave up on, when
/// the job has finished.
static READ_AHEAD_JOBS: Places = Places::per_worker(4);

/// Spare plaintext buffers kept per open file, for reuse instead of
/// allocation, while chunks are being read ahead: a batch's worth, and
/// some. Otherwise a file keeps [`IDLE_SPARE_DATA`]: an idle file should
/// not keep a batch of buffers (a session may hold `sftp.max_handles` open
/// files), and a writer gets a batch's worth back at a time.
const SPARE_DATA: usize = READ_BATCH + 2;

/// Spare plaintext buffers kept when nothing is being read ahead: one for
/// the cache, one for the next chunk.
const IDLE_SPARE_DATA: usize = 2;

/// Spare record buffers kept per open file: those of a batch, one for the
/// read-ahead. Kept because a new one would be zero-filled before use.
const SPARE_RECORDS: usize = BATCH + 1;

/// The buffers a pool job works in: a chunk's plaintext and its record.
struct Buffers {
    data: Vec<u8>,
    record: Vec<u8>,
}

/// What a read-ahead job gives back: the plaintext of its chunks, in order,
/// up to the first that could not be read or did not verify, and the buffer
/// their records were read into. The reader reads a chunk missing here
/// itself, and so reports the error of that very chunk: a bad chunk does
/// not hide the good ones before it.
struct Decoded {
    chunks: Vec<Vec<u8>>,
    records: Vec<u8>,
    slot: Place,
}

/// A read-ahead job: chunks `first..first + count`, being read and
/// decrypted by the pool.
struct ReadJob {
    first: u64,
    count: u64,
    job: Pending<Decoded>,
}

impl ReadJob {
    fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// A write-behind job's outcome: the buffers of its batch back, or the
/// error.
type BatchOutcome = Result<Vec<Buffers>, StoreError>;

/// A batch being encrypted and written by the pool, with its place under
/// [`WRITE_BEHIND_JOBS`], given back once the writer has its buffers back.
struct BatchJob {
    job: Pending<BatchOutcome>,
    _place: Place,
}

/// Index of the chunk holding the last byte of a file of `size` bytes (0 for
/// an empty file, which still has one, empty, chunk).
fn last_index(size: u64) -> u64 {
    if size == 0 {
        0
    } else {
        (size - 1) / CHUNK_SIZE as u64
    }
}

/// Plaintext length of chunk `index` in a file of `size` bytes.
fn chunk_len(index: u64, size: u64) -> usize {
    let start = index * CHUNK_SIZE as u64;
    size.saturating_sub(start).min(CHUNK_SIZE as u64) as usize
}

/// Encrypts full, non-final chunks side by side into `records` and writes
/// each record in its place; gives the buffers back for reuse.
fn encode_and_write(
    blob: &dyn Blob,
    keys: &FileKeys,
    id: &FileId,
    chunks: Vec<CachedChunk>,
    mut records: Vec<Vec<u8>>,
) -> BatchOutcome {
    let mut batch: Vec<format::ChunkToEncode<'_>> = chunks
        .iter()
        .zip(records.iter_mut())
        .map(|(chunk, record)| {
            let mut iv = [0u8; format::BLOCK];
            format::fill_random(&mut iv);
            format::ChunkToEncode {
                index: chunk.index,
                is_final: false,
                plaintext: &chunk.data,
                iv,
                out: record,
            }
        })
        .collect();
    format::encode_chunks(keys, id, &mut batch);
    drop(batch);
    for (chunk, record) in chunks.iter().zip(&records) {
        blob.write_all_at(record, format::record_offset(chunk.index))?;
    }
    Ok(chunks
        .into_iter()
        .zip(records)
        .map(|(chunk, record)| Buffers {
            data: chunk.data,
            record,
        })
        .collect())
}

struct CachedChunk {
    index: u64,
    data: Vec<u8>,
    dirty: bool,
}

/// The state of one open encrypted file, shared by every handle on it.
pub(crate) struct FileState {
    blob: Arc<dyn Blob>,
    keys: Arc<FileKeys>,
    id: FileId,
    /// Logical plaintext size.
    size: u64,
    /// Number of records present on disk.
    disk_chunks: u64,
    cache: Option<CachedChunk>,
    /// Scratch buffer for one encoded record, reused to avoid allocation.
    record: Vec<u8>,
    /// Whether `blob` was opened for writing.
    writable: bool,
    /// Full chunks left behind by the writer, not yet sent to the pool:
    /// they are sent as a batch of [`BATCH`], or before anything that
    /// needs them on disk (see `drain`).
    gathered: Vec<CachedChunk>,
    /// Batches of full chunks being encrypted and written by the pool,
    /// oldest first.
    behind: VecDeque<BatchJob>,
    /// Chunks being read and decrypted ahead of a sequential reader,
    /// oldest first, consecutive.
    ahead: VecDeque<ReadJob>,
    /// Chunks decrypted ahead and not yet loaded, in order, consecutive.
    ready: VecDeque<(u64, Vec<u8>)>,
    /// The place under [`READ_AHEAD_JOBS`] of the job `ready` came from.
    ready_slot: Option<Place>,
    /// Chunks in a row the reader has taken from read-ahead since it last
    /// went elsewhere. From [`READ_BATCH`] on it is kept [`READ_AHEAD`]
    /// batches ahead; before, one chunk: a reader that reads a few chunks
    /// and then jumps (random access by 255 KiB, two handles reading
    /// different parts) must not cost a batch of wasted chunks each time.
    streak: u32,
    /// A read-ahead job's record buffer, kept for reuse (a new one would
    /// be zero-filled before use).
    spare_batch_records: Option<Vec<u8>>,
    /// The chunk loaded before the cached one, to recognise sequential reads.
    previous: Option<u64>,
    /// Plaintext and record buffers kept for reuse (kept apart: a writer
    /// needs more plaintext buffers, a reader as many of each).
    spare_data: Vec<Vec<u8>>,
    spare_records: Vec<Vec<u8>>,
    /// The first failed write of this file (e.g. no space left), returned
    /// again by every later flush: the bytes on disk are then incomplete,
    /// so a staged upload must not be committed at close even if the last
    /// flush alone would succeed (a small final record may still fit on a
    /// full disk).
    write_error: Option<StickyError>,
    /// Where to journal an extension (None: no journal, e.g. a staged file,
    /// which replaces its target only when complete anyway).
    journal_target: Option<JournalTarget>,
    /// The journal of the extension in progress (see `super::journal`).
    journal: Option<Journal>,
}

/// A recorded write failure, replayable as an error (io::Error is not Clone).
#[derive(Clone, Copy)]
enum StickyError {
    Os(i32),
    Kind(io::ErrorKind),
    Other,
}

impl StickyError {
    fn of(e: &StoreError) -> Self {
        match e {
            StoreError::Io(io) => match io.raw_os_error() {
                Some(code) => StickyError::Os(code),
                None => StickyError::Kind(io.kind()),
            },
            _ => StickyError::Other,
        }
    }

    fn error(self) -> StoreError {
        match self {
            StickyError::Os(code) => io::Error::from_raw_os_error(code).into(),
            StickyError::Kind(kind) => io::Error::from(kind).into(),
            StickyError::Other => StoreError::Internal("an earlier write to this file failed"),
        }
    }
}

impl FileState {
    /// Starts a new, empty file on `blob` (which must be empty).
    pub(crate) fn create(blob: Box<dyn Blob>, data_key: &[u8; 32]) -> Result<Self, StoreError> {
        let id = FileId::random();
        let keys = FileKeys::derive(data_key, &id);
        let header = format::encode_header(&keys, &id);
        blob.write_all_at(&header, 0)?;
        let mut state = FileState::new(blob, keys, id, 0, 0, true);
        // The empty chunk 0 makes even an empty file complete on disk.
        state.cache = Some(CachedChunk {
            index: 0,
            data: Vec::with_capacity(CHUNK_SIZE),
            dirty: true,
        });
        Ok(state)
    }

    /// Opens an existing encrypted file: checks the header and derives the
    /// plaintext size from the stored length and the last length field.
    pub(crate) fn open(
        blob: Box<dyn Blob>,
        data_key: &[u8; 32],
        writable: bool,
    ) -> Result<Self, StoreError> {
        let stored_len = blob.meta()?.stored_len;
        let mut header = [0u8; HEADER_LEN];
        read_exact_or_integrity(&*blob, &mut header, 0)?;
        let id = format::parse_header(&header)?;
        let keys = FileKeys::derive(data_key, &id);
        format::verify_header(&keys, &header)?;
        let layout = Layout::from_stored_len(stored_len)?;
        let size = read_plaintext_len(&*blob, &layout)?;
        Ok(FileState::new(
            blob,
            keys,
            id,
            size,
            layout.chunks,
            writable,
        ))
    }

    fn new(
        blob: Box<dyn Blob>,
        keys: FileKeys,
        id: FileId,
        size: u64,
        disk_chunks: u64,
        writable: bool,
    ) -> Self {
        FileState {
            blob: Arc::from(blob),
            keys: Arc::new(keys),
            id,
            size,
            disk_chunks,
            cache: None,
            record: Vec::with_capacity(format::FULL_RECORD_LEN),
            writable,
            gathered: Vec::with_capacity(BATCH),
            behind: VecDeque::new(),
            ahead: VecDeque::new(),
            ready: VecDeque::new(),
            ready_slot: None,
            streak: 0,
            spare_batch_records: None,
            previous: None,
            spare_data: Vec::new(),
            spare_records: Vec::new(),
            write_error: None,
            journal_target: None,
            journal: None,
        }
    }

    /// Swaps in a writable descriptor of the same file if this state was
    /// opened read-only.
    pub(crate) fn replace_blob_if_readonly(&mut self, blob: Box<dyn Blob>) {
        if !self.writable {
            self.blob = Arc::from(blob);
            self.writable = true;
        }
    }

    /// Journals extensions of this file beside it from now on.
    pub(crate) fn set_journal_target(&mut self, target: JournalTarget) {
        if self.journal_target.is_none() {
            self.journal_target = Some(target);
        }
    }

    /// Before an extension first rewrites the last record on disk: saves
    /// that record and the stored length in a journal, unless one is active.
    fn begin_journal(&mut self) -> Result<(), StoreError> {
        if self.journal.is_some() || self.disk_chunks == 0 {
            return Ok(());
        }
        if self.journal_target.is_none() {
            return Ok(());
        }
        self.drain()?;
        let stored_len = self.blob.meta()?.stored_len;
        let Ok(layout) = Layout::from_stored_len(stored_len) else {
            // Not a whole file on disk: nothing sound to roll back to.
            return Ok(());
        };
        let offset = format::record_offset(layout.chunks - 1);
        let mut record = vec![0u8; (stored_len - offset) as usize];
        read_exact_or_integrity(&*self.blob, &mut record, offset)?;
        let Some(target) = &self.journal_target else {
            return Ok(());
        };
        match Journal::begin(target, &self.id, stored_len, offset, &record) {
            Ok(j) => self.journal = Some(j),
            // The file was renamed into a removed directory meanwhile: go on
            // without a journal rather than fail the write.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Logical plaintext size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Stored metadata of the underlying blob.
    pub(crate) fn blob_meta(&self) -> io::Result<Meta> {
        self.blob.meta()
    }

    pub(crate) fn blob(&self) -> &dyn Blob {
        &*self.blob
    }

    /// Reads up to `len` bytes at `offset`; fewer at the end of the file.
    pub(crate) fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.read_into(offset, len, &mut out)?;
        Ok(out)
    }

    /// Appends up to `len` bytes from `offset` to `out` and returns how many
    /// (0 at or past the end). The caller chooses the buffer, so that a
    /// reply can be built around the data without copying it again.
    pub(crate) fn read_into(
        &mut self,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, StoreError> {
        if offset >= self.size {
            return Ok(0);
        }
        let end = self.size.min(offset.saturating_add(len as u64));
        let start_len = out.len();
        out.reserve((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_SIZE as u64;
            let within = (pos % CHUNK_SIZE as u64) as usize;
            let chunk = self.load(index)?;
            let take = (chunk.data.len().saturating_sub(within)).min((end - pos) as usize);
            if take == 0 {
                // The cached chunk is shorter than the size says: an internal
                // inconsistency; report it rather than loop.
                out.truncate(start_len);
                return Err(FormatError::Integrity("chunk shorter than the file size").into());
            }
            out.extend_from_slice(&chunk.data[within..within + take]);
            pos += take as u64;
        }
        Ok(out.len() - start_len)
    }

    /// Writes `data` at `offset`; a gap past the end reads back as zeros.
    /// Growth past `bounds.max_size` is refused before anything is written;
    /// filling a gap stops when `bounds.stop` is raised (see `extend_to`).
    pub(crate) fn write_at(
        &mut self,
        offset: u64,
        data: &[u8],
        bounds: &Bounds,
    ) -> Result<(), StoreError> {
        let end = offset.checked_add(data.len() as u64);
        bounds.check_growth(self.size, end)?;
        let end = end.unwrap_or(u64::MAX);
        if data.is_empty() {
            // As pwrite(2): writing nothing does not extend the file.
            return Ok(());
        }
        // The first chunk whose record this rewrites: the one `offset`
        // falls in, or the old last one, which an extension seals.
        let first = (offset / CHUNK_SIZE as u64).min(if end > self.size {
            last_index(self.size)
        } else {
            u64::MAX
        });
        self.check_floor(first, offset)?;
        self.forget_ahead();
        if end > self.size {
            // Chunks from the one `offset` falls in are about to be written
            // whole or in part: no zero records for them.
            self.extend_to(end, offset / CHUNK_SIZE as u64, bounds)?;
        }
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = pos / CHUNK_SIZE as u64;
            let within = (pos % CHUNK_SIZE as u64) as usize;
            let take = (CHUNK_SIZE - within).min(rest.len());
            let cached = self.cache.as_ref().is_some_and(|c| c.index == index);
            if within == 0 && !cached && index >= self.disk_chunks {
                // A chunk that is nowhere yet, written from its start: made
                // from the data itself, not zero-filled and then overwritten.
                self.load_new(index, &rest[..take])?;
            } else {
                let chunk = self.load(index)?;
                if chunk.data.len() < within + take {
                    chunk.data.resize(within + take, 0);
                }
                chunk.data[within..within + take].copy_from_slice(&rest[..take]);
                chunk.dirty = true;
            }
            rest = &rest[take..];
            pos += take as u64;
        }
        Ok(())
    }

    /// Truncates or extends (with zeros) to `new_size`, within `bounds` as
    /// `write_at`.
    pub(crate) fn set_len(&mut self, new_size: u64, bounds: &Bounds) -> Result<(), StoreError> {
        bounds.check_growth(self.size, Some(new_size))?;
        if new_size != self.size {
            // The record rewritten first: the old last one for an
            // extension, the new last one for a truncation.
            let first = last_index(self.size.min(new_size));
            self.check_floor(first, new_size)?;
        }
        self.forget_ahead();
        if new_size > self.size {
            self.extend_to(new_size, u64::MAX, bounds)?;
            let last = last_index(new_size);
            let chunk = self.load(last)?;
            chunk.dirty = true;
            return self.flush();
        }
        if new_size == self.size {
            return Ok(());
        }
        let last = last_index(new_size);
        if let Some(c) = &self.cache
            && c.index > last
        {
            // Beyond the new end: its contents are cut off anyway.
            self.cache = None;
        }
        let chunk = self.load(last)?;
        chunk.data.truncate(chunk_len(last, new_size));
        chunk.dirty = true;
        self.size = new_size;
        // Write the new last record now, then cut the file after it.
        self.flush()
    }

    /// Refuses, before anything changes, a change at plaintext `offset`
    /// that would rewrite chunk `first`'s record where the storage cannot
    /// write any more (see [`Blob::write_floor`]).
    fn check_floor(&self, first: u64, offset: u64) -> Result<(), StoreError> {
        let Some(floor) = self.blob.write_floor() else {
            return Ok(());
        };
        if format::record_offset(first) >= floor {
            return Ok(());
        }
        Err(super::storage::unsupported(format!(
            "this storage cannot change a stored file before its last part: \
             bytes from offset {offset} lie in a part already stored \
             (random writes below the end and truncation are refused on S3; \
             write at or after the end, or upload the whole file again)"
        ))
        .into())
    }

    /// Writes the dirty cached chunk, if any.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        // Writes in flight land first: a final record and the truncation
        // after it must come last.
        self.drain()?;
        if let Some(e) = self.write_error {
            return Err(e.error());
        }
        let result = self.flush_cached();
        self.note(result)
    }

    /// Records the first write failure (see `write_error`).
    fn note<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result
            && self.write_error.is_none()
        {
            self.write_error = Some(StickyError::of(e));
        }
        result
    }

    fn flush_cached(&mut self) -> Result<(), StoreError> {
        let Some(chunk) = self.cache.as_mut() else {
            return Ok(());
        };
        if !chunk.dirty {
            return Ok(());
        }
        let index = chunk.index;
        let is_final = index == last_index(self.size);
        let len = chunk_len(index, self.size);
        chunk.data.resize(len, 0);
        let mut iv = [0u8; format::BLOCK];
        format::fill_random(&mut iv);
        self.record.clear();
        format::encode_chunk(
            &self.keys,
            &self.id,
            index,
            is_final,
            &chunk.data,
            &iv,
            &mut self.record,
        );
        let offset = format::record_offset(index);
        self.blob.write_all_at(&self.record, offset)?;
        chunk.dirty = false;
        if is_final {
            let end = offset + self.record.len() as u64;
            if self.blob.meta()?.stored_len != end {
                self.blob.set_len(end)?;
            }
            self.disk_chunks = index + 1;
            if let Some(journal) = self.journal.take() {
                // The file ends in a final record again. Synced first, so
                // that the journal outlives a torn file even on power loss.
                self.blob.sync()?;
                journal.end();
            }
        } else {
            self.disk_chunks = self.disk_chunks.max(index + 1);
        }
        Ok(())
    }

    /// Flushes and makes the file durable.
    pub(crate) fn sync(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        self.blob.sync()?;
        Ok(())
    }

    /// Grows the logical size to `new_size`, rewriting on disk every chunk
    /// between the old last chunk and the new last one (the old last becomes
    /// full and not final; chunks of a gap before chunk `written_from`
    /// become zeros). From `written_from` on, the new last chunk and the
    /// cached chunk are left to the caller and to `flush`.
    ///
    /// The zero records of a gap (which may be gigabytes: a WRITE far past
    /// the end) are written first, past the end of the file, where they
    /// change nothing yet; if `bounds.stop` is raised meanwhile they are cut
    /// off again and this fails with [`StoreError::Interrupted`], leaving
    /// the file as it was. Only then is the old last record sealed.
    fn extend_to(
        &mut self,
        new_size: u64,
        written_from: u64,
        bounds: &Bounds,
    ) -> Result<(), StoreError> {
        let old_last = last_index(self.size);
        let new_last = last_index(new_size);
        // Before the gap's records count as on disk.
        let old_last_on_disk = old_last < self.disk_chunks;
        if new_last > old_last {
            let journaled = self.journal.is_some();
            // The old last record is about to stop being final. The journal
            // also covers a crash while the gap is written: rolling back
            // cuts the file to its old length.
            self.begin_journal()?;
            // Zero records only for a gap the caller will not write: a
            // chunk the caller writes next is loaded as zeros (it is not on
            // disk) and written once, not written as zeros, read back and
            // written again.
            let gap_end = new_last.min(written_from);
            if old_last + 1 < gap_end {
                self.write_gap(old_last + 1..gap_end, journaled, bounds)?;
            }
        }
        if new_last == old_last && old_last < self.disk_chunks {
            // The last chunk stays last but grows. Its record on disk holds
            // the old length, and `read_chunk_from_disk` derives the record
            // length from `self.size`: cache it while the size is still old.
            self.load(old_last)?;
        }
        let cached = self.cache.as_ref().map(|c| c.index);
        if new_last > old_last {
            // Seal the old last chunk as full and non-final, unless it is the
            // cached one (flush will then write it with the new size).
            if cached == Some(old_last) {
                // Its record on disk is marked final: it must be rewritten.
                if let Some(c) = self.cache.as_mut() {
                    c.dirty = true;
                }
            } else if old_last_on_disk {
                let mut data = Vec::with_capacity(CHUNK_SIZE);
                self.read_chunk_from_disk(old_last, &mut data)?;
                data.resize(CHUNK_SIZE, 0);
                self.size = new_size;
                self.write_record(old_last, false, &data)?;
            }
            self.size = new_size;
        } else {
            self.size = new_size;
        }
        if let Some(c) = self.cache.as_mut() {
            let len = chunk_len(c.index, self.size);
            if c.data.len() < len {
                c.data.resize(len, 0);
                c.dirty = true;
            }
        }
        Ok(())
    }

    /// Writes zero records for the chunks of `gap`, which lie past the end
    /// of the file on disk, checking `bounds.stop` before each. Stopped, it
    /// cuts them off again (see `cut_gap`) and fails with
    /// [`StoreError::Interrupted`]. `journaled`: whether a journal was
    /// active before this extension began.
    fn write_gap(
        &mut self,
        gap: std::ops::Range<u64>,
        journaled: bool,
        bounds: &Bounds,
    ) -> Result<(), StoreError> {
        // What the file was before the gap, to go back to: writes in flight
        // land first, so that the length is the whole of it.
        self.drain()?;
        let stored_len = self.blob.meta()?.stored_len;
        let disk_chunks = self.disk_chunks;
        let zeros = vec![0u8; CHUNK_SIZE];
        for index in gap {
            if let Err(stopped) = bounds.check_stop() {
                self.cut_gap(stored_len, disk_chunks, journaled)?;
                return Err(stopped);
            }
            self.write_record(index, false, &zeros)?;
        }
        Ok(())
    }

    /// Undoes `write_gap`: cuts the file back to `stored_len`, which ends in
    /// the untouched old last record. A journal begun for this extension is
    /// then no longer needed (the file is what it saved); one that was
    /// active before stays, for the extension it belongs to.
    fn cut_gap(
        &mut self,
        stored_len: u64,
        disk_chunks: u64,
        journaled: bool,
    ) -> Result<(), StoreError> {
        // A failure here leaves records past the end: sticky, so that a
        // staged file with them is never committed.
        let cut = self.blob.set_len(stored_len).map_err(StoreError::from);
        self.note(cut)?;
        self.disk_chunks = disk_chunks;
        if !journaled && let Some(journal) = self.journal.take() {
            // Synced first, as in `flush_cached`: the journal must outlive
            // a file that still shows the gap after a power loss.
            self.blob.sync()?;
            journal.end();
        }
        Ok(())
    }

    fn write_record(&mut self, index: u64, is_final: bool, data: &[u8]) -> Result<(), StoreError> {
        self.drain()?;
        let mut iv = [0u8; format::BLOCK];
        format::fill_random(&mut iv);
        self.record.clear();
        format::encode_chunk(
            &self.keys,
            &self.id,
            index,
            is_final,
            data,
            &iv,
            &mut self.record,
        );
        let written = self
            .blob
            .write_all_at(&self.record, format::record_offset(index))
            .map_err(StoreError::from);
        self.note(written)?;
        self.disk_chunks = self.disk_chunks.max(index + 1);
        Ok(())
    }

    /// Makes chunk `index` the cached chunk (flushing the previous one) and
    /// returns it.
    fn load(&mut self, index: u64) -> Result<&mut CachedChunk, StoreError> {
        let hit = self.cache.as_ref().is_some_and(|c| c.index == index);
        if !hit {
            self.evict()?;
            let len = chunk_len(index, self.size);
            let sequential = index > 0 && self.previous == Some(index - 1);
            self.previous = Some(index);
            let data = match self.take_read_ahead(index) {
                Some(data) => {
                    self.streak = self.streak.saturating_add(1);
                    self.top_up_read_ahead(index + 1);
                    data
                }
                None => {
                    self.forget_ahead();
                    // A sequential reader gets the next chunks decrypted by
                    // workers while this one is decrypted here.
                    if sequential {
                        self.top_up_read_ahead(index + 1);
                    }
                    // Reuse a buffer: sequential I/O then allocates nothing
                    // per chunk and the buffer never regrows.
                    let mut data = self.take_data();
                    if index < self.disk_chunks && len > 0 {
                        self.read_chunk_from_disk(index, &mut data)?;
                    } else {
                        data.clear();
                        data.resize(len, 0);
                    }
                    data
                }
            };
            self.cache = Some(CachedChunk {
                index,
                data,
                dirty: false,
            });
        }
        // Invariant: the cache was filled just above if it did not hold `index`.
        #[allow(clippy::expect_used)]
        Ok(self.cache.as_mut().expect("cache filled above"))
    }

    /// Makes chunk `index`, which is neither cached nor on disk, the cached
    /// chunk, starting with `prefix` (zeros after it, up to the chunk's
    /// length), as `load` and a write of `prefix` at its start would.
    fn load_new(&mut self, index: u64, prefix: &[u8]) -> Result<(), StoreError> {
        self.evict()?;
        self.previous = Some(index);
        let mut data = self.take_data();
        data.clear();
        data.extend_from_slice(prefix);
        let len = chunk_len(index, self.size);
        if data.len() < len {
            data.resize(len, 0);
        }
        self.cache = Some(CachedChunk {
            index,
            data,
            dirty: true,
        });
        Ok(())
    }

    /// Frees the cache slot. A dirty chunk that is not the last one is full
    /// and complete: it joins the batch being gathered for the pool, to be
    /// encrypted and written while the caller goes on; anything else is
    /// flushed here.
    fn evict(&mut self) -> Result<(), StoreError> {
        let behind = self
            .cache
            .as_ref()
            .is_some_and(|c| c.dirty && c.index != last_index(self.size));
        if !behind {
            self.flush()?;
            if let Some(c) = self.cache.take() {
                let record = Vec::new();
                self.keep_spare(Buffers {
                    data: c.data,
                    record,
                });
            }
            return Ok(());
        }
        let Some(mut chunk) = self.cache.take() else {
            return Ok(());
        };
        // Not the last chunk, so full: make sure of it, as flush does.
        chunk.data.resize(CHUNK_SIZE, 0);
        self.disk_chunks = self.disk_chunks.max(chunk.index + 1);
        self.gathered.push(chunk);
        if self.gathered.len() >= BATCH {
            self.send_gathered()?;
        }
        Ok(())
    }

    /// Sends the gathered chunks to the pool as one batch, once fewer than
    /// [`WRITE_BEHIND`] batches are in flight; encrypts and writes them
    /// here while the process is at [`WRITE_BEHIND_JOBS`].
    fn send_gathered(&mut self) -> Result<(), StoreError> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        while self.behind.len() >= WRITE_BEHIND {
            self.wait_oldest()?;
        }
        let chunks = std::mem::replace(&mut self.gathered, Vec::with_capacity(BATCH));
        let records: Vec<Vec<u8>> = chunks.iter().map(|_| self.take_record()).collect();
        let (blob, keys, id) = (self.blob.clone(), self.keys.clone(), self.id);
        let write = move || encode_and_write(blob.as_ref(), &keys, &id, chunks, records);
        match WRITE_BEHIND_JOBS.take() {
            Some(place) => self.behind.push_back(BatchJob {
                job: pool::spawn(write),
                _place: place,
            }),
            None => {
                for buffers in self.note(write())? {
                    self.keep_spare(buffers);
                }
            }
        }
        Ok(())
    }

    /// Chunk `index`'s plaintext if it was read ahead (waiting for its job
    /// if need be); `None` if it was not. Chunks read ahead before `index`
    /// are dropped: the reader has moved past them.
    fn take_read_ahead(&mut self, index: u64) -> Option<Vec<u8>> {
        self.drop_ready_before(index);
        if self.ready.is_empty() {
            while self.ahead.front().is_some_and(|j| j.end() <= index) {
                self.ahead.pop_front();
            }
            if self.ahead.front().is_none_or(|j| j.first > index) {
                return None;
            }
            let job = self.ahead.pop_front()?;
            // A job that panicked gave nothing: the chunks are read here.
            if let Some(Decoded {
                chunks,
                records,
                slot,
            }) = job.job.wait_soon()
            {
                self.spare_batch_records.get_or_insert(records);
                self.ready.extend((job.first..).zip(chunks));
                self.ready_slot = Some(slot);
            }
        }
        self.drop_ready_before(index);
        if self.ready.front().is_none_or(|(i, _)| *i != index) {
            return None;
        }
        let data = self.ready.pop_front().map(|(_, data)| data);
        if self.ready.is_empty() {
            self.ready_slot = None;
        }
        data
    }

    fn drop_ready_before(&mut self, index: u64) {
        while self.ready.front().is_some_and(|(i, _)| *i < index) {
            if let Some((_, data)) = self.ready.pop_front() {
                self.keep_spare_data(data);
            }
        }
    }

    /// Keeps jobs reading and decrypting the chunks from `from` on, as far
    /// as the records on disk go: [`READ_AHEAD`] batches for a reader with a
    /// long enough `streak`, one chunk otherwise. None
    /// while chunks are being written (they would be read before they
    /// land), or while the process is at [`READ_AHEAD_JOBS`].
    fn top_up_read_ahead(&mut self, from: u64) {
        if !self.behind.is_empty() || !self.gathered.is_empty() {
            return;
        }
        let (jobs, batch) = if self.streak >= READ_BATCH as u32 {
            (READ_AHEAD, READ_BATCH as u64)
        } else {
            (1, 1)
        };
        let end = self.disk_chunks.min(last_index(self.size) + 1);
        let mut next = self
            .ahead
            .back()
            .map(ReadJob::end)
            .or(self.ready.back().map(|(i, _)| i + 1))
            .unwrap_or(from)
            .max(from);
        while self.ahead.len() < jobs && next < end {
            let count = (end - next).min(batch);
            let Some(slot) = READ_AHEAD_JOBS.take() else {
                break;
            };
            self.spawn_read_ahead(next, count, slot);
            next += count;
        }
        if self.ahead.is_empty() {
            // Read to the end: keep no more than an idle file needs.
            self.drop_read_ahead_spares();
        }
    }

    /// Starts reading chunks `first..first + count` (all on disk) with one
    /// read, and decrypting them, on a worker.
    fn spawn_read_ahead(&mut self, first: u64, count: u64, slot: Place) {
        let last = last_index(self.size);
        let lens: Vec<usize> = (first..first + count)
            .map(|i| chunk_len(i, self.size))
            .collect();
        let mut chunks: Vec<Vec<u8>> = lens.iter().map(|_| self.take_data()).collect();
        let mut records = self.spare_batch_records.take().unwrap_or_default();
        let (blob, keys, id) = (self.blob.clone(), self.keys.clone(), self.id);
        let job = pool::spawn(move || {
            let total = lens.iter().map(|&len| format::record_len(len)).sum();
            // Only growth is zero-filled: a reused buffer keeps its length.
            records.resize(total, 0);
            if blob
                .read_exact_at(&mut records, format::record_offset(first))
                .is_err()
            {
                chunks.clear();
            }
            let mut slices = Vec::with_capacity(chunks.len());
            let mut at = 0;
            for &len in lens.iter().take(chunks.len()) {
                slices.push(&records[at..at + format::record_len(len)]);
                at += format::record_len(len);
            }
            let good =
                format::decode_chunks_replacing(&keys, &id, first, last, &slices, &mut chunks);
            chunks.truncate(good);
            Decoded {
                chunks,
                records,
                slot,
            }
        });
        self.ahead.push_back(ReadJob { first, count, job });
    }

    /// Drops what was read ahead (the file is about to change, or the
    /// reader jumped elsewhere). Jobs still running finish on their own.
    fn forget_ahead(&mut self) {
        self.ahead.clear();
        self.ready.clear();
        self.ready_slot = None;
        self.streak = 0;
        self.drop_read_ahead_spares();
    }

    /// Keeps no more spare buffers than a file that is not read ahead needs.
    fn drop_read_ahead_spares(&mut self) {
        self.spare_batch_records = None;
        self.spare_data.truncate(IDLE_SPARE_DATA);
    }

    fn take_data(&mut self) -> Vec<u8> {
        self.spare_data
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_SIZE))
    }

    fn take_record(&mut self) -> Vec<u8> {
        self.spare_records
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(format::FULL_RECORD_LEN))
    }

    /// Keeps a job's buffers (or the cache's) for reuse, up to the bounds.
    fn keep_spare(&mut self, b: Buffers) {
        self.keep_spare_data(b.data);
        if b.record.capacity() > 0 && self.spare_records.len() < SPARE_RECORDS {
            self.spare_records.push(b.record);
        }
    }

    /// Whether letting go of an idle writer's buffers needs a wait: chunks
    /// gathered or being written behind it (see `trim_idle`).
    pub(crate) fn writes_behind(&self) -> bool {
        !self.behind.is_empty() || !self.gathered.is_empty()
    }

    /// Lets go of what an idle writer holds beyond its cached chunk (the
    /// partial chunk it must keep) and the record scratch buffer: sends off
    /// and waits for the chunks written behind it, then drops their buffers
    /// and the spares. Without this, a handle written a few MiB and left
    /// open keeps up to [`WRITE_BEHIND`] finished batches until its next
    /// write or close, and a session may hold `sftp.max_handles` of them.
    /// A write failure meanwhile is sticky (see `note`): the next flush or
    /// close reports it.
    pub(crate) fn trim_idle(&mut self) {
        let _ = self.drain();
        self.drop_spares();
    }

    /// Drops the spare buffers of a writer (see `trim_idle`); a reader's
    /// stay while it is read ahead.
    pub(crate) fn drop_spares(&mut self) {
        self.spare_records = Vec::new();
        if self.ahead.is_empty() && self.ready.is_empty() {
            self.spare_data = Vec::new();
            self.spare_batch_records = None;
        }
    }

    /// Bytes of chunk buffers this file holds for writing: the cached
    /// chunk, the record scratch buffer, gathered chunks, batches in flight
    /// (counted full) and spares. What the tests check an idle writer holds.
    #[cfg(test)]
    pub(crate) fn held_write_bytes(&self) -> usize {
        let batch = BATCH * (CHUNK_SIZE + format::FULL_RECORD_LEN);
        self.cache.as_ref().map_or(0, |c| c.data.capacity())
            + self.record.capacity()
            + self
                .gathered
                .iter()
                .map(|c| c.data.capacity())
                .sum::<usize>()
            + self.behind.len() * batch
            + self.spare_data.iter().map(Vec::capacity).sum::<usize>()
            + self.spare_records.iter().map(Vec::capacity).sum::<usize>()
            + self.spare_batch_records.as_ref().map_or(0, Vec::capacity)
    }

    /// Read-ahead jobs in flight, spare plaintext buffers and spare
    /// read-ahead record buffers: what the tests check a reader holds.
    #[cfg(test)]
    pub(crate) fn read_ahead_state(&self) -> (usize, usize, usize) {
        (
            self.ahead.len(),
            self.spare_data.len(),
            usize::from(self.spare_batch_records.is_some()),
        )
    }

    fn keep_spare_data(&mut self, data: Vec<u8>) {
        let keep = if self.ahead.is_empty() {
            IDLE_SPARE_DATA
        } else {
            SPARE_DATA
        };
        if data.capacity() > 0 && self.spare_data.len() < keep {
            self.spare_data.push(data);
        }
    }

    /// Waits for the oldest write in flight.
    fn wait_oldest(&mut self) -> Result<(), StoreError> {
        let Some(job) = self.behind.pop_front() else {
            return Ok(());
        };
        let result = job
            .job
            .wait()
            .ok_or(StoreError::Internal("a crypto worker failed"))
            .and_then(|r| r);
        for buffers in self.note(result)? {
            self.keep_spare(buffers);
        }
        Ok(())
    }

    /// Sends off the gathered chunks and waits for every write in flight;
    /// the first failure is returned after all have finished.
    fn drain(&mut self) -> Result<(), StoreError> {
        let mut first = self.send_gathered();
        while !self.behind.is_empty() {
            let r = self.wait_oldest();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Reads, authenticates and decrypts chunk `index` from disk into `out`
    /// (replacing what it held). Every chunk but the cached one is on disk as the logical size says (see the
    /// module invariants), so its length and finality follow from the size.
    fn read_chunk_from_disk(&mut self, index: u64, out: &mut Vec<u8>) -> Result<(), StoreError> {
        // The chunk may be among the writes in flight.
        self.drain()?;
        let is_final = index == last_index(self.size);
        let len = chunk_len(index, self.size);
        self.record.resize(format::record_len(len), 0);
        read_exact_or_integrity(&*self.blob, &mut self.record, format::record_offset(index))?;
        format::decode_chunk_replacing(&self.keys, &self.id, index, is_final, &self.record, out)?;
        Ok(())
    }
}

impl Drop for FileState {
    fn drop(&mut self) {
        // The last handle is gone. A journal still active means the final
        // record was never written (a write failed, so the client was told):
        // roll the extension back now rather than leave the end unreadable
        // until the next start. Writes in flight land first.
        if let Some(journal) = self.journal.take() {
            let _ = self.drain();
            journal.roll_back(&*self.blob);
        }
    }
}

/// Reads exactly `buf.len()` bytes; a short file is an integrity failure.
fn read_exact_or_integrity(blob: &dyn Blob, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
    match blob.read_exact_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(FormatError::Integrity("file is shorter than its records").into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The exact plaintext size of a stored file: layout from its length plus
/// the 4-byte length field of its last record.
pub(crate) fn read_plaintext_len(blob: &dyn Blob, layout: &Layout) -> Result<u64, StoreError> {
    let mut field = [0u8; LEN_FIELD];
    let last_offset = format::record_offset(layout.chunks - 1);
    read_exact_or_integrity(blob, &mut field, last_offset)?;
    Ok(layout.plaintext_len(field)?)
}
