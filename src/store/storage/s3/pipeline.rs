//! Overlapping an open object's transfers with the session's own work:
//! an upload's parts are sent on threads of their own, a few at a time,
//! while the client sends the next ones; a sequential reader's next
//! windows are fetched while it reads the current one. One request at a
//! time would leave the link idle for a round trip per part or window and
//! the store's parallelism unused.
//!
//! Each request runs on a short-lived thread: a thread costs tens of
//! microseconds, a part or window request milliseconds. Memory is bounded
//! by the counts below (parts and windows in flight per open object).

use std::collections::VecDeque;
use std::ops::Range;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::aws::s3::{S3Client, S3Error};

/// Parts of one upload on their way at most.
pub(super) const PARTS_IN_FLIGHT: usize = 4;

/// Windows fetched ahead of a sequential reader at most.
pub(super) const WINDOWS_AHEAD: usize = 2;

/// A request on its own thread.
type Request<T> = JoinHandle<Result<T, S3Error>>;

/// Runs `request` on a thread of its own.
fn spawn<T: Send + 'static>(
    name: &str,
    request: impl FnOnce() -> Result<T, S3Error> + Send + 'static,
) -> Result<Request<T>, S3Error> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(request)
        .map_err(|e| S3Error::Unavailable(format!("cannot start an S3 request: {e}")))
}

/// The answer of a request's thread.
fn wait<T>(request: Request<T>) -> Result<T, S3Error> {
    request
        .join()
        .map_err(|_| S3Error::Invalid("an S3 request's thread panicked".into()))?
}

/// The parts of one multipart upload that are on their way, oldest first.
#[derive(Default)]
pub(super) struct PartsInFlight {
    sending: VecDeque<(u32, Request<String>)>,
}

impl PartsInFlight {
    /// How many parts are on their way.
    pub(super) fn len(&self) -> usize {
        self.sending.len()
    }

    /// Sends `data` as part `number` of upload `id` of `key`, first waiting
    /// for the oldest part if [`PARTS_IN_FLIGHT`] are on their way. Parts
    /// that finished are appended to `done` (in order), with their ETags;
    /// a part that failed fails this call.
    pub(super) fn send(
        &mut self,
        client: &S3Client,
        key: &str,
        id: &str,
        number: u32,
        data: Vec<u8>,
        done: &mut Vec<(u32, String)>,
    ) -> Result<(), S3Error> {
        self.collect(done, PARTS_IN_FLIGHT - 1)?;
        let (client, key, id) = (client.clone(), key.to_owned(), id.to_owned());
        let request = spawn("s3-part", move || {
            client.upload_part(&key, &id, number, &data)
        })?;
        self.sending.push_back((number, request));
        Ok(())
    }

    /// Waits for every part on its way; appends them to `done`.
    pub(super) fn finish(&mut self, done: &mut Vec<(u32, String)>) -> Result<(), S3Error> {
        self.collect(done, 0)
    }

    /// Waits until at most `keep` parts are on their way, and takes the
    /// finished ones at the front too, appending each to `done`.
    fn collect(&mut self, done: &mut Vec<(u32, String)>, keep: usize) -> Result<(), S3Error> {
        while self.sending.len() > keep
            || self
                .sending
                .front()
                .is_some_and(|(_, request)| request.is_finished())
        {
            let Some((number, request)) = self.sending.pop_front() else {
                break;
            };
            done.push((number, wait(request)?));
        }
        Ok(())
    }
}

/// Windows of a stored version fetched ahead of a sequential reader,
/// in order.
#[derive(Default)]
pub(super) struct ReadAhead {
    fetching: VecDeque<(Range<u64>, Request<Bytes>)>,
}

impl ReadAhead {
    /// The window starting at `offset`, if it is the next one fetched
    /// (waiting for it); otherwise forgets every window (the reader moved)
    /// and returns `None`.
    pub(super) fn take(&mut self, offset: u64) -> Option<Result<Bytes, S3Error>> {
        match self.fetching.front() {
            Some((range, _)) if range.start == offset => {
                let (_, request) = self.fetching.pop_front()?;
                Some(wait(request))
            }
            _ => {
                self.clear();
                None
            }
        }
    }

    /// Starts fetching the windows of `window` bytes from `from` on (after
    /// those already on their way), up to [`WINDOWS_AHEAD`] and the end
    /// of the version `etag`, `len` bytes long. A window that cannot be
    /// started is left for the reader to fetch itself.
    pub(super) fn fill(
        &mut self,
        client: &S3Client,
        key: &str,
        etag: &str,
        from: u64,
        len: u64,
        window: usize,
    ) {
        let mut next = self.fetching.back().map_or(from, |(range, _)| range.end);
        while self.fetching.len() < WINDOWS_AHEAD && next < len {
            let range = next..len.min(next + window as u64);
            let (client, key, etag) = (client.clone(), key.to_owned(), etag.to_owned());
            let r = range.clone();
            match spawn("s3-read-ahead", move || {
                client.get_range(&key, r, Some(&etag))
            }) {
                Ok(request) => self.fetching.push_back((range.clone(), request)),
                Err(_) => return,
            }
            next = range.end;
        }
    }

    /// Forgets every window on its way (their threads finish alone).
    pub(super) fn clear(&mut self) {
        self.fetching.clear();
    }
}
