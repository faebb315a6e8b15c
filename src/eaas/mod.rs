//! The reference key service (`dropzone-eaas`): RSA key pairs per secret
//! path and version, encrypted at rest or in a PKCS#11 token, behind the
//! HTTP API of the original EaaS (see `docs/EAAS.md`).
//!
//! From the wire down:
//! - [`server`]: start-up from the [`config`] and the HTTP/1.1 transport
//!   (hyper on tokio, optional [`tls`]).
//! - [`service`]: routing, the bearer [`token`], and the one place that maps
//!   outcomes to HTTP statuses; works on plain values, not HTTP types.
//! - [`request`]: JSON bodies parsed into typed requests naming a
//!   [`secret::KeyId`].
//! - [`keystore`]: the key pairs and RSA-OAEP-SHA1, behind one trait: key
//!   files under `keys_dir`, encrypted with the [`passphrase`], with an
//!   in-memory cache; or, with the cargo feature `pkcs11`, a PKCS#11 token.
//!
//! This module shares nothing with the `dropzone` server but the
//! crate-private `atomic_file` module: the service is a separate process
//! that may run on another host.

pub mod config;
pub mod keystore;
pub mod passphrase;
pub mod request;
pub mod secret;
pub mod server;
pub mod service;
pub mod tls;
pub mod token;
