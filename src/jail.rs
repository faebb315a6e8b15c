//! Client paths to paths inside the user's root.
//!
//! The user's root appears to the client as `/`, which is also their home
//! and working directory. Resolution here is lexical: `.` and empty
//! components vanish, `..` climbs but never above `/`, a NUL byte or a
//! reserved name is refused. Symlinks are not looked at here: the storage
//! backend resolves the resulting [`ObjectPath`] with the root as `/`
//! (`openat2(RESOLVE_IN_ROOT)`), so no link and no race can lead outside.
//! A symlink *target* is checked here by its text ([`symlink_target`]) and
//! by the store against the real tree, so that a link also stays inside
//! for host programs that follow it on disk.

use crate::store::storage::{BadName, Climb, ObjectPath, climb};

/// Why a client path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JailError {
    /// The path contains a NUL byte.
    #[error("invalid path: it contains a NUL byte")]
    Nul,
    /// A component is not a usable name.
    #[error("invalid path: {0}")]
    BadName(#[from] BadName),
    /// A relative symlink target with a `..` after a name.
    #[error(
        "symlink target: \"..\" is accepted only at the start of a relative target \
         (write \"../../x\", not \"a/../x\")"
    )]
    DotDotAfterName,
}

/// Resolves a client path (absolute, or relative to `/`).
pub fn resolve(client_path: &str) -> Result<ObjectPath, JailError> {
    resolve_from(&ObjectPath::root(), client_path)
}

/// Resolves a client path relative to `base` (absolute paths ignore it).
pub fn resolve_from(base: &ObjectPath, client_path: &str) -> Result<ObjectPath, JailError> {
    if client_path.contains('\0') {
        return Err(JailError::Nul);
    }
    let mut parts: Vec<String> = if client_path.starts_with('/') {
        Vec::new()
    } else {
        base.components().to_vec()
    };
    for part in client_path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name.to_owned()),
        }
    }
    Ok(ObjectPath::from_components(parts)?)
}

/// Checks a client's symlink target and returns what to pass to the store.
///
/// A relative target is kept as written (READLINK then returns exactly
/// it, as with OpenSSH), provided its names are usable and its `..`
/// components all come first: a `..` after a name would resolve through
/// whatever that name is on disk at the time (a link, later), so it is
/// refused (see [`crate::store::storage::Storage::symlink`] for why that
/// keeps every link inside the root). An absolute target, meaning a path
/// under the user's root, is normalised here; the store writes it relative
/// to the link's real directory, so that no program following the link on
/// disk leaves the root. How far a relative target may climb depends on
/// the link's real depth, which only the store knows: it checks that.
pub fn symlink_target(target: &str) -> Result<String, JailError> {
    if target.is_empty() {
        return Err(BadName::NotAName(String::new()).into());
    }
    if target.starts_with('/') {
        return Ok(resolve(target)?.to_client_string());
    }
    if target.contains('\0') {
        return Err(JailError::Nul);
    }
    for part in target.split('/') {
        if !matches!(part, "" | "." | "..") {
            ObjectPath::root().join(part)?;
        }
    }
    if let Climb::Inner { .. } = climb(target) {
        return Err(JailError::DotDotAfterName);
    }
    Ok(target.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        resolve(s).unwrap().to_client_string()
    }

    #[test]
    fn dot_dot_never_climbs_above_the_root() {
        assert_eq!(p("../../etc/passwd"), "/etc/passwd");
        assert_eq!(p("/a/b/../../../c"), "/c");
        assert_eq!(p("a/./b//c/"), "/a/b/c");
        assert_eq!(p(""), "/");
        assert_eq!(p("."), "/");
        assert_eq!(p(".."), "/");
    }

    #[test]
    fn nul_and_reserved_names_are_refused() {
        assert_eq!(resolve("a\0b"), Err(JailError::Nul));
        assert!(matches!(
            resolve("/x/.dropzone-upload-1"),
            Err(JailError::BadName(BadName::Reserved))
        ));
    }

    #[test]
    fn relative_paths_resolve_from_base() {
        let base = resolve("/d/e").unwrap();
        assert_eq!(
            resolve_from(&base, "../f").unwrap().to_client_string(),
            "/d/f"
        );
        assert_eq!(resolve_from(&base, "/g").unwrap().to_client_string(), "/g");
    }

    #[test]
    fn symlink_targets_are_kept_or_normalised() {
        assert_eq!(symlink_target("b/c").unwrap(), "b/c");
        assert_eq!(symlink_target("../../x").unwrap(), "../../x");
        assert_eq!(symlink_target("./../x//y/").unwrap(), "./../x//y/");
        assert_eq!(symlink_target("/etc/../passwd").unwrap(), "/passwd");
        assert_eq!(symlink_target("/").unwrap(), "/");
        assert_eq!(
            symlink_target("d1/d2/s/../bob/secret.txt"),
            Err(JailError::DotDotAfterName)
        );
        assert_eq!(symlink_target("../a/.."), Err(JailError::DotDotAfterName));
        assert_eq!(symlink_target("a\0b"), Err(JailError::Nul));
        assert!(matches!(
            symlink_target("x/.dropzone-upload-1"),
            Err(JailError::BadName(BadName::Reserved))
        ));
        assert!(symlink_target("").is_err());
    }
}
