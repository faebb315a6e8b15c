//! Tests of the encrypted file and user store over a real directory.
