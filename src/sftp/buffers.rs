//! Reused buffers for the large packets of a transfer: WRITE requests as
//! they are read, DATA replies as they are built.
//!
//! A transfer allocates a ~256 KiB buffer for every packet, on one thread,
//! and frees it on another (the reader allocates, a blocking thread frees; a
//! blocking thread builds a reply, the writer frees it). Per-thread
//! allocators keep such memory in the heap of the thread that allocated it,
//! so a burst of sessions across many blocking threads leaves the process
//! holding several times the memory that was ever live at once (measured:
//! 24 MiB live at the peak of 8 parallel transfers, 80-100 MiB resident, and
//! most of it kept afterwards). Buffers taken from one process-wide free
//! list keep the resident memory close to what is live, and the list keeps
//! at most [`IDLE_MAX`] buffers once a burst is over.

use std::sync::Mutex;

use bytes::Bytes;

/// Capacity of a pooled buffer: the largest packet accepted, with room for
/// its header (a DATA reply of the largest read fits too).
pub const CAPACITY: usize = super::MAX_PACKET_LEN as usize + 1024;

/// Buffers smaller than this are allocated as usual: they are not what
/// fragments the heap, and a pooled one would hold far more than needed.
pub const POOLED_FROM: usize = 128 * 1024;

/// Idle buffers kept for reuse (4 MiB); more are freed.
const IDLE_MAX: usize = 16;

/// The process-wide free list.
static POOL: Pool = Pool::new(IDLE_MAX);

/// An empty buffer that can hold `len` bytes: a pooled one when `len` is
/// large enough to be worth it.
pub fn take(len: usize) -> Vec<u8> {
    POOL.take(len)
}

/// Makes `buf` shareable; a pooled buffer goes back to the free list when
/// the last `Bytes` pointing into it is dropped.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    POOL.freeze(buf)
}

/// A free list of buffers of [`CAPACITY`] bytes.
struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
    max_idle: usize,
}

impl Pool {
    const fn new(max_idle: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        crate::sync::lock(&self.idle)
    }

    fn take(&self, len: usize) -> Vec<u8> {
        if !(POOLED_FROM..=CAPACITY).contains(&len) {
            return Vec::with_capacity(len);
        }
        let reused = self.idle().pop();
        reused.unwrap_or_else(|| Vec::with_capacity(CAPACITY))
    }

    fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() == CAPACITY {
            Bytes::from_owner(Pooled { buf, pool: self })
        } else {
            Bytes::from(buf)
        }
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(buf);
        }
    }
}

/// A pooled buffer lent to a `Bytes`.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_small_ones_are_not() {
        static LOCAL: Pool = Pool::new(4);
        let small = LOCAL.take(4096);
        assert!(small.capacity() >= 4096 && small.capacity() < POOLED_FROM);
        assert_eq!(LOCAL.freeze(small).len(), 0);
        assert_eq!(LOCAL.idle().len(), 0, "small buffers are not kept");

        let mut big = LOCAL.take(200 * 1024);
        assert_eq!(big.capacity(), CAPACITY);
        big.extend_from_slice(b"reply");
        let addr = big.as_ptr();
        let bytes = LOCAL.freeze(big);
        let slice = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(LOCAL.idle().len(), 0, "a slice keeps the buffer lent");
        assert_eq!(&slice[..], b"ep");
        drop(slice);
        assert_eq!(LOCAL.idle().len(), 1);
        let again = LOCAL.take(CAPACITY);
        assert_eq!(again.as_ptr(), addr, "the same allocation, reused");
        assert!(again.is_empty());
    }

    #[test]
    fn the_free_list_is_bounded() {
        static LOCAL: Pool = Pool::new(3);
        let many: Vec<Bytes> = (0..10)
            .map(|_| LOCAL.freeze(LOCAL.take(CAPACITY)))
            .collect();
        drop(many);
        assert_eq!(LOCAL.idle().len(), 3);
    }
}
