//! Integration test modules.

pub mod harness;

mod auth;
mod jail;
mod paramiko;
mod scp;
mod sftp;
mod tamper;
