//! Key-service latency and errors: a [`KeyWrapper`] that times the calls of
//! the one it wraps. The server wraps its backend in it, so `kms` itself
//! knows nothing of metrics.

use std::sync::Arc;
use std::time::Instant;

use crate::kms::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};

use super::Metrics;

/// Times every call to `inner` into `dropzone_kms_request_duration_seconds`
/// and counts failures in `dropzone_kms_errors_total`.
pub struct ObservedKeyWrapper {
    inner: Arc<dyn KeyWrapper>,
    metrics: Arc<Metrics>,
}

impl ObservedKeyWrapper {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn KeyWrapper>, metrics: Arc<Metrics>) -> Self {
        ObservedKeyWrapper { inner, metrics }
    }

    fn timed<T>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let started = Instant::now();
        let result = call();
        let error = result.as_ref().err().map(error_kind);
        self.metrics.kms_call(op, started.elapsed(), error);
        result
    }
}

/// The `kind` label of a failure.
fn error_kind(e: &KmsError) -> &'static str {
    match e {
        KmsError::Unavailable(_) => "unavailable",
        KmsError::Refused(_) => "refused",
        KmsError::InvalidVersion(_) => "invalid_version",
        KmsError::Misconfigured(_) => "misconfigured",
        KmsError::Io(_) => "io",
    }
}

impl KeyWrapper for ObservedKeyWrapper {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn current(&self) -> MasterKeyRef {
        self.inner.current()
    }

    fn ensure_master_key(&self, under: &MasterKeyRef) -> Result<(), KmsError> {
        self.timed("ensure_master_key", || self.inner.ensure_master_key(under))
    }

    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.timed("wrap", || self.inner.wrap(key, under, ctx))
    }

    fn wrap_new(
        &self,
        key: &[u8; 32],
        ctx: &WrapContext,
    ) -> Result<(Vec<u8>, MasterKeyRef), KmsError> {
        self.timed("wrap", || self.inner.wrap_new(key, ctx))
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, KmsError> {
        self.timed("unwrap", || self.inner.unwrap(wrapped, under, ctx))
    }

    // Forwarded, not left to the defaults: the inner backend may do these
    // itself (Vault re-wraps without the key leaving it, wraps new keys
    // under its latest version).
    fn rewrap(
        &self,
        wrapped: &[u8],
        from: &MasterKeyRef,
        to: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.timed("rewrap", || self.inner.rewrap(wrapped, from, to, ctx))
    }

    fn rotate_master_key(&self) -> Result<MasterKeyRef, KmsError> {
        self.timed("rotate_master_key", || self.inner.rotate_master_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that refuses every unwrap and wraps by copying.
    struct Fake;

    impl KeyWrapper for Fake {
        fn backend(&self) -> &'static str {
            "fake"
        }
        fn current(&self) -> MasterKeyRef {
            MasterKeyRef {
                secret_path: "p".into(),
                secret_version: "1".into(),
            }
        }
        fn ensure_master_key(&self, _: &MasterKeyRef) -> Result<(), KmsError> {
            Err(KmsError::Unavailable("down".into()))
        }
        fn wrap(
            &self,
            key: &[u8; 32],
            _: &MasterKeyRef,
            _: &WrapContext,
        ) -> Result<Vec<u8>, KmsError> {
            Ok(key.to_vec())
        }
        fn unwrap(
            &self,
            _: &[u8],
            _: &MasterKeyRef,
            _: &WrapContext,
        ) -> Result<zeroize::Zeroizing<[u8; 32]>, KmsError> {
            Err(KmsError::Refused("no".into()))
        }
    }

    #[test]
    fn calls_are_timed_and_failures_counted() {
        let metrics = Arc::new(Metrics::new());
        let w = ObservedKeyWrapper::new(Arc::new(Fake), metrics.clone());
        let under = w.current();
        let ctx = WrapContext::for_user(&crate::username::UserName::parse("alice").unwrap());
        assert_eq!(w.backend(), "fake");
        assert_eq!(w.wrap(&[1; 32], &under, &ctx).unwrap(), vec![1; 32]);
        // Forwarded (to the default here), timed as a wrap.
        assert_eq!(
            w.wrap_new(&[2; 32], &ctx).unwrap(),
            (vec![2; 32], under.clone())
        );
        assert!(w.unwrap(&[], &under, &ctx).is_err());
        assert!(w.ensure_master_key(&under).is_err());
        // The default re-wrap unwraps first, so the fake's refusal shows.
        assert!(w.rewrap(&[], &under, &under, &ctx).is_err());
        assert!(matches!(
            w.rotate_master_key(),
            Err(KmsError::Misconfigured(m)) if m.contains("--secret-version")
        ));
        let text = metrics.render();
        for want in [
            "dropzone_kms_request_duration_seconds_count{op=\"wrap\"} 2\n",
            "dropzone_kms_request_duration_seconds_count{op=\"unwrap\"} 1\n",
            "dropzone_kms_errors_total{op=\"unwrap\",kind=\"refused\"} 1\n",
            "dropzone_kms_errors_total{op=\"ensure_master_key\",kind=\"unavailable\"} 1\n",
            "dropzone_kms_errors_total{op=\"rewrap\",kind=\"refused\"} 1\n",
            "dropzone_kms_errors_total{op=\"rotate_master_key\",kind=\"misconfigured\"} 1\n",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(!text.contains("op=\"wrap\",kind="), "{text}");
    }
}
