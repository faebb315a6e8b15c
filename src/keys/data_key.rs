//! [`DataKey`]: a user's unwrapped data key in memory.

use zeroize::Zeroize;

/// Length of a data key in bytes (AES-256 / HMAC-SHA256 key material).
pub const DATA_KEY_LEN: usize = 32;

/// A user's unwrapped 32-byte data key.
///
/// No `Debug`, no `Clone`: the bytes leave this type only through
/// [`DataKey::expose`]. They live in one heap allocation, so moving a
/// `DataKey` never leaves a copy behind, and are zeroized on drop.
pub struct DataKey(Box<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Takes ownership of `bytes` and zeroizes the caller's copy.
    pub fn from_bytes(mut bytes: [u8; DATA_KEY_LEN]) -> Self {
        let key = Self::copy_from(&bytes);
        bytes.zeroize();
        key
    }

    /// A copy of `bytes`; the caller keeps (and zeroizes) its own.
    pub(crate) fn copy_from(bytes: &[u8; DATA_KEY_LEN]) -> Self {
        let mut key = DataKey(Box::new([0u8; DATA_KEY_LEN]));
        key.0.copy_from_slice(bytes);
        key
    }

    /// A fresh key from the operating system's CSPRNG.
    pub(crate) fn random() -> Result<Self, getrandom::Error> {
        let mut key = DataKey(Box::new([0u8; DATA_KEY_LEN]));
        getrandom::fill(&mut key.0[..])?;
        Ok(key)
    }

    /// The key bytes, for deriving file keys.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_from_bytes_keeps_the_bytes() {
        let a = DataKey::random().unwrap();
        let b = DataKey::random().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(DataKey::from_bytes([9; 32]).expose(), &[9; 32]);
    }
}
