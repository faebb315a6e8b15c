//! The names this client puts in request paths: mounts and key names are
//! checked so that a setting can never reach another API path (`..`, an
//! extra segment, a query).

use crate::kms::KmsError;

/// A mount path: segments of letters, digits, `_ - .`, separated by single
/// slashes (no `..`, no leading or trailing slash).
pub(crate) fn check_path_segments(what: &str, path: &str) -> Result<(), KmsError> {
    let ok = !path.is_empty()
        && path.len() <= 128
        && path.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(KmsError::Misconfigured(format!(
            "{what} {:?}: use path segments of letters, digits, _ - . separated by /",
            path.chars().take(40).collect::<String>()
        )))
    }
}

/// A Transit key name: one path segment.
pub(crate) fn check_key_name(name: &str) -> Result<(), KmsError> {
    if name.contains('/') {
        return Err(KmsError::Misconfigured(format!(
            "key name {:?}: no / allowed",
            name.chars().take(40).collect::<String>()
        )));
    }
    check_path_segments("key name", name)
}
