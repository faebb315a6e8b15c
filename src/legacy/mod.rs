//! Migration from the original (Python) Dropzone: `dropzone import-legacy`.
//!
//! The original kept, per user, a key file `keks/.<sha224 hex of the
//! name>.secret` (its AES key wrapped by the EaaS, in hex) and a home
//! directory `homes/<name>/` of `NAME.enc` files (a 16-byte IV, then
//! AES-256-CBC of the zero-padded content; no MAC), plus plaintext files
//! left by sessions that were open or crashed.
//!
//! - [`format`](mod@format): the legacy file format, pure functions on bytes.
//! - [`source`]: reading the legacy tree (key files, file contents).
//! - [`walk`]: one home directory turned into a plan (names, collisions).
//! - [`import`](mod@import): the walk that writes through [`crate::store`]
//!   with keys from [`crate::keys`].
//! - [`report`]: progress events and the final summary.
//!
//! The source is never modified. `docs/MIGRATION.md` is the operator's guide.

pub mod format;
pub mod import;
pub mod report;
pub mod source;
pub mod walk;

pub use import::{ImportError, ImportOptions, import};
pub use report::{Event, FileOutcome, Summary};

#[cfg(test)]
mod tests;
