//! Client paths to paths inside the user's root.
//!
//! The user's root appears to the client as `/`, which is also their home
//! and working directory. Resolution here is lexical: `.` and empty
//! components vanish, `..` climbs but never above `/`, a NUL byte or a
//! reserved name is refused. Symlinks are not looked at here: the storage
//! backend resolves the resulting [`ObjectPath`] with the root as `/`
//! (`openat2(RESOLVE_IN_ROOT)`), so no link and no race can lead outside.

use crate::store::storage::{BadName, ObjectPath};

/// Why a client path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JailError {
    /// The path contains a NUL byte.
    #[error("invalid path: it contains a NUL byte")]
    Nul,
    /// A component is not a usable name.
    #[error("invalid path: {0}")]
    BadName(#[from] BadName),
    /// A symlink target that would point outside the user's root.
    #[error("symlink target points outside your directory")]
    TargetOutside,
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

/// Checks a client's symlink target and returns what to store in the link.
///
/// A relative target is kept as given if, taken from the link's directory,
/// it never climbs above the root; an absolute target (meaning a path under
/// the user's root) is rewritten relative to the link's directory, so the
/// link on disk points inside the root for every program, not only for
/// Dropzone's in-root resolution.
pub fn symlink_target(link: &ObjectPath, target: &str) -> Result<String, JailError> {
    if target.is_empty() {
        return Err(BadName::NotAName(String::new()).into());
    }
    let dir = link.parent();
    if target.starts_with('/') {
        let dest = resolve(target)?;
        return Ok(relative_path(&dir, &dest));
    }
    if target.contains('\0') {
        return Err(JailError::Nul);
    }
    let mut depth = dir.components().len();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth = depth.checked_sub(1).ok_or(JailError::TargetOutside)?;
            }
            name => {
                ObjectPath::root().join(name)?;
                depth += 1;
            }
        }
    }
    Ok(target.to_owned())
}

/// The relative path from directory `from` to `to`.
fn relative_path(from: &ObjectPath, to: &ObjectPath) -> String {
    let a = from.components();
    let b = to.components();
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<&str> = vec![".."; a.len() - common];
    parts.extend(b[common..].iter().map(String::as_str));
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
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
    fn symlink_targets_stay_inside() {
        let link = resolve("/a/link").unwrap();
        assert_eq!(symlink_target(&link, "b/c").unwrap(), "b/c");
        assert_eq!(symlink_target(&link, "../x").unwrap(), "../x");
        assert_eq!(
            symlink_target(&link, "../../x"),
            Err(JailError::TargetOutside)
        );
        assert_eq!(
            symlink_target(&link, "/etc/passwd").unwrap(),
            "../etc/passwd"
        );
        assert_eq!(symlink_target(&link, "/a/z").unwrap(), "z");
        assert_eq!(symlink_target(&link, "/a").unwrap(), ".");
    }
}
