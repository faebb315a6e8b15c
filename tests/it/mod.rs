//! Integration test modules.

pub mod harness;

mod access;
mod allocator;
mod audit;
mod auth;
mod aws_kms;
mod budgets;
mod bursts;
mod certificates;
mod config_doc;
mod container;
mod crash;
mod eaas_client;
#[cfg(feature = "pkcs11")]
mod eaas_pkcs11;
mod eaas_service;
mod faults;
mod growth;
mod hardening;
mod healthcheck;
mod import_legacy;
mod jail;
mod layers;
mod metrics;
mod migrate;
#[cfg(feature = "pam")]
mod pam;
mod paramiko;
mod paramiko_suite;
mod quota;
pub mod raw_sftp;
mod rclone_lftp;
mod s3_client;
mod s3_commands;
mod s3_nodes;
mod s3_serve;
mod s3_store;
mod s3_users;
mod scan;
mod scp;
pub mod seaweed;
mod sftp;
mod sshfs;
mod tamper;
mod vault;
