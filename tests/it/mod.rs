//! Integration test modules.

pub mod harness;

mod auth;
mod eaas_client;
mod eaas_service;
mod jail;
mod paramiko;
mod scp;
mod sftp;
mod tamper;
