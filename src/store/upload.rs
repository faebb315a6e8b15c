//! The hook through which an upload is checked before it replaces anything,
//! and announced once it has.
//!
//! The store knows nothing of scanners or HTTP: it hands an [`UploadGate`]
//! the finished file's plaintext as a [`Read`] (decrypted chunk by chunk
//! from the staged object, so plaintext stays in memory) and commits only
//! if the gate accepts. [`crate::upload`] implements the gate.

use std::io::{self, Read};

use super::StoreError;
use super::file::FileState;
use super::format::CHUNK_SIZE;
use super::storage::ObjectPath;

/// A finished upload as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// Where it goes (the client's path, relative to the user's root).
    pub path: &'a ObjectPath,
    /// Plaintext size in bytes.
    pub size: u64,
}

/// Why a gate refused an upload: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One line, safe to show to the client.
    pub reason: String,
}

/// Decides whether a finished upload may be committed, and hears about
/// commits. Called on blocking threads.
pub trait UploadGate: Send + Sync {
    /// Whether uploads are checked. When they are, every write to an
    /// existing file goes through a staged copy, so that nothing unchecked
    /// replaces a stored version.
    fn checks(&self) -> bool;
    /// Reads the upload's plaintext from `content` (possibly not all of it)
    /// and accepts or rejects it.
    fn check(&self, upload: Upload<'_>, content: &mut dyn Read) -> Result<(), Rejection>;
    /// The upload is stored (after a commit, or after an in-place write
    /// when uploads are not checked).
    fn committed(&self, upload: Upload<'_>);
}

/// The plaintext of a file being closed, one chunk at a time. A store error
/// (e.g. a failed MAC) ends the stream with an I/O error and is kept in
/// `failure`, so that the close reports it rather than a rejection.
pub(crate) struct PlaintextReader<'s> {
    state: &'s mut FileState,
    offset: u64,
    buffer: Vec<u8>,
    consumed: usize,
    pub(crate) failure: Option<StoreError>,
}

impl<'s> PlaintextReader<'s> {
    pub(crate) fn new(state: &'s mut FileState) -> Self {
        PlaintextReader {
            state,
            offset: 0,
            buffer: Vec::new(),
            consumed: 0,
            failure: None,
        }
    }
}

impl Read for PlaintextReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.consumed == self.buffer.len() {
            if self.failure.is_some() {
                return Err(io::Error::other("the upload could not be read back"));
            }
            match self.state.read_at(self.offset, CHUNK_SIZE) {
                Ok(chunk) => {
                    self.offset += chunk.len() as u64;
                    self.buffer = chunk;
                    self.consumed = 0;
                }
                Err(e) => {
                    self.failure = Some(e);
                    return Err(io::Error::other("the upload could not be read back"));
                }
            }
        }
        let n = out.len().min(self.buffer.len() - self.consumed);
        out[..n].copy_from_slice(&self.buffer[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}
