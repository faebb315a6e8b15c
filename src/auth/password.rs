//! Password hashes: Argon2id in PHC string form (`$argon2id$v=19$m=...`).
//!
//! Verification is deliberately slow (tens of milliseconds) and blocking;
//! callers on an async runtime use `spawn_blocking`. [`dummy_verify`] costs
//! the same as a real check, so an unknown user, a user without a password
//! and a wrong password all take the same time (docs/HARDENING.md, "Unknown
//! users").

use std::sync::LazyLock;

use argon2::password_hash::{self, PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB: 19 MiB, with [`T_COST`] 2 and [`P_COST`] 1 the
/// OWASP password storage recommendation for Argon2id (and argon2's default).
const M_COST: u32 = 19 * 1024;
/// Passes over memory; see [`M_COST`].
const T_COST: u32 = 2;
/// Lanes; see [`M_COST`]. One lane keeps a login to one core.
const P_COST: u32 = 1;

/// Why a password could not be hashed (only an OS random source failure, or
/// a password too long for Argon2, in practice).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The OS random number generator failed while making the salt.
    #[error("cannot generate a salt: {0}")]
    Salt(String),
    /// Argon2 refused the input or parameters.
    #[error("cannot hash password: {0}")]
    Hash(password_hash::Error),
}

/// Why a stored hash is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHash {
    /// Not a PHC string at all.
    #[error("not a PHC hash string ($argon2id$v=19$m=...,t=...,p=...$salt$hash)")]
    Syntax,
    /// A PHC string for another algorithm.
    #[error("algorithm {0:?} is not supported; use argon2id")]
    Algorithm(String),
    /// Parameters argon2 rejects, or a missing salt or hash.
    #[error("invalid argon2 parameters, salt or hash")]
    Parameters,
}

/// The hasher with our parameters. Verification takes its parameters from
/// the stored hash instead, so older hashes keep working if these change.
fn hasher() -> Result<Argon2<'static>, password_hash::Error> {
    let params = Params::new(M_COST, T_COST, P_COST, None)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with Argon2id and a fresh random salt, returning the
/// PHC string to store in the users file.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = password_hash::try_generate_salt().map_err(|e| HashError::Salt(e.to_string()))?;
    let hash = hasher()
        .and_then(|h| h.hash_password_with_salt(password.as_bytes(), &salt))
        .map_err(HashError::Hash)?;
    Ok(hash.to_string())
}

/// Checks that `hash` is an Argon2 PHC string that [`verify_password`] can
/// use, without the cost of verifying anything.
pub fn check_hash(hash: &str) -> Result<(), InvalidHash> {
    let parsed = PasswordHash::new(hash).map_err(|_| InvalidHash::Syntax)?;
    let algorithm = parsed.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(InvalidHash::Algorithm(algorithm.chars().take(32).collect()));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() || Params::try_from(&parsed).is_err() {
        return Err(InvalidHash::Parameters);
    }
    Ok(())
}

/// Whether `password` matches the PHC string `hash`. A malformed hash never
/// matches. The comparison of the outputs is constant-time.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A PHC string with our parameters that no password matches. It is
/// written out rather than computed: verifying a password against it costs
/// one Argon2 run with these parameters, like any real hash, and its output
/// of 32 zero bytes is one that Argon2 produces with probability 2^-256.
/// Computing it would have cost a 19 MiB Argon2 run at start-up, memory the
/// allocator then keeps for the server's lifetime. The salt protects no
/// secret; it only has to be valid.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    const SALT: &str = "ZHJvcHpvbmUtZHVtbXktc2FsdA"; // "dropzone-dummy-salt"
    let zero_output = "A".repeat(43); // 32 bytes, unpadded B64
    format!("$argon2id$v=19$m={M_COST},t={T_COST},p={P_COST}${SALT}${zero_output}")
});

/// Does the work of a failed [`verify_password`] against a hash with our
/// parameters, and returns nothing: used for unknown users and users without
/// a password so they cost what a wrong password costs.
pub fn dummy_verify(password: &str) {
    let _ = verify_password(&DUMMY_HASH, password);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn round_trip_and_wrong_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(check_hash(&hash), Ok(()));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert!(!verify_password(&hash, ""));
        // A fresh salt every time.
        assert_ne!(hash, hash_password("correct horse").unwrap());
    }

    #[test]
    fn empty_and_unicode_passwords() {
        let hash = hash_password("").unwrap();
        assert!(verify_password(&hash, ""));
        let hash = hash_password("pässwörd🔑").unwrap();
        assert!(verify_password(&hash, "pässwörd🔑"));
        assert!(!verify_password(&hash, "passwort"));
    }

    #[test]
    fn malformed_hashes_never_match() {
        for bad in [
            "",
            "x",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA",
        ] {
            assert!(!verify_password(bad, ""), "{bad:?}");
            assert!(check_hash(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            check_hash(
                "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E"
            ),
            Err(InvalidHash::Algorithm(_))
        ));
    }

    /// The unknown-user path must do the work a real check does: the same
    /// verifier over a hash with exactly the parameters real hashes get.
    /// (Timing tests are too noisy to prove this; the parameters are not.)
    #[test]
    fn dummy_hash_has_the_parameters_of_real_hashes() {
        let dummy: &str = &DUMMY_HASH;
        let real = hash_password("anything").unwrap();
        let params = |h: &str| {
            let parsed = PasswordHash::new(h).unwrap();
            (
                parsed.algorithm.as_str().to_owned(),
                Params::try_from(&parsed).unwrap(),
            )
        };
        let (dummy_alg, dummy_params) = params(dummy);
        let (real_alg, real_params) = params(&real);
        assert_eq!(dummy_alg, real_alg);
        assert_eq!(
            (
                dummy_params.m_cost(),
                dummy_params.t_cost(),
                dummy_params.p_cost()
            ),
            (
                real_params.m_cost(),
                real_params.t_cost(),
                real_params.p_cost()
            )
        );
        assert_eq!(check_hash(dummy), Ok(()));
    }

    /// The dummy hash is written out, not computed: it must still be a hash
    /// that verification runs Argon2 on and that nothing matches.
    #[test]
    fn dummy_hash_matches_no_password() {
        for password in ["", "password", "dropzone: no such password"] {
            assert!(!verify_password(&DUMMY_HASH, password), "{password:?}");
        }
        let parsed = PasswordHash::new(&DUMMY_HASH).unwrap();
        assert_eq!(parsed.hash.map(|h| h.len()), Some(32));
    }

    #[test]
    fn dummy_costs_about_a_real_verification() {
        let hash = hash_password("secret").unwrap();
        let time = |f: &dyn Fn()| {
            let start = Instant::now();
            for _ in 0..3 {
                f();
            }
            start.elapsed()
        };
        let real = time(&|| {
            assert!(!verify_password(&hash, "wrong"));
        });
        let dummy = time(&|| dummy_verify("wrong"));
        let ratio = dummy.as_secs_f64() / real.as_secs_f64();
        // Loose bounds: this only catches a dummy that skips the work.
        assert!((0.3..3.0).contains(&ratio), "real {real:?} dummy {dummy:?}");
    }
}
