//! Turns one legacy home directory into a plan: the directories to mirror
//! and, for each source file, where its content goes in the user's
//! Dropzone tree. Reads directory listings only, never file contents.
//!
//! Naming rules:
//! - `NAME.enc` is an encrypted file whose content goes to `NAME`;
//!   any other regular file is plaintext the original left behind and keeps
//!   its name; directories keep their names.
//! - If both `NAME` and `NAME.enc` exist, the plaintext wins: the original
//!   decrypted every file at login and encrypted it again at logout, so a
//!   plaintext copy is the one the open (or crashed) session last saw; the
//!   `.enc` is reported as superseded and not imported.
//! - A directory and a file that would get the same name: the directory
//!   wins and the file is reported as an error.
//! - Symlinks and special files are skipped and reported; names that are not
//!   UTF-8 or that Dropzone cannot store are reported as errors.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::source::{ENC_SUFFIX, SourceKind};
use crate::store::storage::ObjectPath;

/// A source file and where its content goes.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The file in the legacy home.
    pub source: PathBuf,
    /// How its content is stored.
    pub kind: SourceKind,
    /// Its path in the user's Dropzone tree.
    pub dest: ObjectPath,
    /// For a plaintext file with an encrypted sibling `NAME.enc`: that file,
    /// which is not imported.
    pub supersedes: Option<PathBuf>,
    /// Modification time of the source, seconds since the epoch.
    pub mtime: i64,
    /// Access time of the source, seconds since the epoch.
    pub atime: i64,
}

/// Something in the home that is not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The entry in the legacy home.
    pub path: PathBuf,
    /// Why it is left.
    pub reason: String,
    /// Whether it may hold user data (an error) or not (a symlink, a
    /// special file: a warning).
    pub data: bool,
}

/// The plan for one home directory, in a stable (sorted, parents first) order.
#[derive(Debug, Default)]
pub struct HomePlan {
    /// Directories to create, parents before children.
    pub dirs: Vec<ObjectPath>,
    /// Files to import.
    pub files: Vec<PlannedFile>,
    /// Entries not imported.
    pub left: Vec<Left>,
}

impl HomePlan {
    /// Whether any file to import needs the legacy key.
    pub fn has_encrypted(&self) -> bool {
        self.files.iter().any(|f| f.kind == SourceKind::Encrypted)
    }
}

/// One directory entry, classified.
enum Item {
    Dir(PathBuf),
    File(FileItem),
}

struct FileItem {
    path: PathBuf,
    kind: SourceKind,
    mtime: i64,
    atime: i64,
}

/// Scans the home directory `home` recursively. An error listing the home
/// itself is returned; errors below it are recorded in the plan.
pub fn plan_home(home: &Path) -> io::Result<HomePlan> {
    let mut plan = HomePlan::default();
    // Listing the root must work; deeper failures are recorded.
    std::fs::read_dir(home)?;
    let mut stack = vec![(home.to_path_buf(), ObjectPath::root())];
    while let Some((dir, dest)) = stack.pop() {
        let children = plan_dir(&dir, &dest, &mut plan);
        // Reversed so that the stack pops them in sorted order.
        stack.extend(children.into_iter().rev());
    }
    Ok(plan)
}

/// Plans one directory's entries; returns its subdirectories to visit.
fn plan_dir(dir: &Path, dest: &ObjectPath, plan: &mut HomePlan) -> Vec<(PathBuf, ObjectPath)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            plan.left.push(Left {
                path: dir.to_owned(),
                reason: format!("cannot list the directory: {e}"),
                data: true,
            });
            return Vec::new();
        }
    };
    // Destination name -> the entries that want it.
    let mut by_dest: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    let mut names: Vec<_> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => names.push(e.path()),
            Err(e) => plan.left.push(Left {
                path: dir.to_owned(),
                reason: format!("cannot list the directory: {e}"),
                data: true,
            }),
        }
    }
    names.sort();
    for path in names {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                plan.left.push(Left {
                    path,
                    reason: format!("cannot stat: {e}"),
                    data: true,
                });
                continue;
            }
        };
        let Some(name) = path
            .file_name()
            .and_then(|n| std::str::from_utf8(n.as_bytes()).ok())
            .map(str::to_owned)
        else {
            plan.left.push(Left {
                path,
                reason: "the name is not UTF-8, which SFTP clients cannot name".into(),
                data: true,
            });
            continue;
        };
        let ft = meta.file_type();
        let (dest_name, item) = if ft.is_dir() {
            (name, Item::Dir(path))
        } else if ft.is_file() {
            use std::os::unix::fs::MetadataExt;
            let (dest_name, kind) = match name.strip_suffix(ENC_SUFFIX) {
                Some(stem) => (stem.to_owned(), SourceKind::Encrypted),
                None => (name, SourceKind::Plain),
            };
            let item = Item::File(FileItem {
                path,
                kind,
                mtime: meta.mtime(),
                atime: meta.atime(),
            });
            (dest_name, item)
        } else {
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file or directory"
            };
            plan.left.push(Left {
                path,
                reason: format!("{what}: skipped"),
                data: false,
            });
            continue;
        };
        by_dest.entry(dest_name).or_default().push(item);
    }

    let mut subdirs = Vec::new();
    for (dest_name, items) in by_dest {
        let target = match dest.join(&dest_name) {
            Ok(t) => t,
            Err(e) => {
                for item in items {
                    plan.left.push(Left {
                        path: item_path(&item).to_owned(),
                        reason: format!("cannot be stored as {dest_name:?}: {e}"),
                        data: true,
                    });
                }
                continue;
            }
        };
        // At most one directory, one plaintext file and one `.enc` per name.
        let (mut dir, mut plain, mut enc) = (None, None, None);
        for item in items {
            match item {
                Item::Dir(p) => dir = Some(p),
                Item::File(f) if f.kind == SourceKind::Plain => plain = Some(f),
                Item::File(f) => enc = Some(f),
            }
        }
        if let Some(path) = dir {
            for f in plain.into_iter().chain(enc) {
                plan.left.push(Left {
                    path: f.path,
                    reason: format!(
                        "its name {} is taken by a directory: not imported",
                        target.to_client_string()
                    ),
                    data: true,
                });
            }
            plan.dirs.push(target.clone());
            subdirs.push((path, target));
            continue;
        }
        let (winner, supersedes) = match (plain, enc) {
            (Some(p), enc) => (p, enc.map(|e| e.path)),
            (None, Some(e)) => (e, None),
            (None, None) => continue,
        };
        plan.files.push(PlannedFile {
            source: winner.path,
            kind: winner.kind,
            dest: target,
            supersedes,
            mtime: winner.mtime,
            atime: winner.atime,
        });
    }
    subdirs
}

fn item_path(item: &Item) -> &Path {
    match item {
        Item::Dir(p) | Item::File(FileItem { path: p, .. }) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn plans_names_kinds_collisions_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("alice");
        touch(&home.join("a.txt.enc"));
        touch(&home.join("notes"));
        touch(&home.join("both"));
        touch(&home.join("both.enc"));
        touch(&home.join("sub/deep/x.enc"));
        std::fs::create_dir_all(home.join("empty")).unwrap();
        touch(&home.join("clash.enc"));
        std::fs::create_dir_all(home.join("clash")).unwrap();
        touch(&home.join(".enc"));
        touch(&home.join(".dropzone-staged.enc"));
        std::os::unix::fs::symlink("/etc/passwd", home.join("link")).unwrap();

        let plan = plan_home(&home).unwrap();
        let dirs: Vec<String> = plan.dirs.iter().map(|d| d.to_client_string()).collect();
        assert_eq!(dirs, ["/clash", "/empty", "/sub", "/sub/deep"]);

        let files: Vec<(String, SourceKind, Option<String>)> = plan
            .files
            .iter()
            .map(|f| {
                (
                    f.dest.to_client_string(),
                    f.kind,
                    f.supersedes
                        .as_ref()
                        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("/a.txt".into(), SourceKind::Encrypted, None),
                ("/both".into(), SourceKind::Plain, Some("both.enc".into())),
                ("/notes".into(), SourceKind::Plain, None),
                ("/sub/deep/x".into(), SourceKind::Encrypted, None),
            ]
        );
        assert!(plan.has_encrypted());

        let left: Vec<(String, bool)> = plan
            .left
            .iter()
            .map(|l| {
                (
                    l.path.file_name().unwrap().to_string_lossy().into_owned(),
                    l.data,
                )
            })
            .collect();
        assert!(left.contains(&(".enc".into(), true)), "{:?}", plan.left);
        assert!(
            left.contains(&(".dropzone-staged.enc".into(), true)),
            "{:?}",
            plan.left
        );
        assert!(
            left.contains(&("clash.enc".into(), true)),
            "{:?}",
            plan.left
        );
        assert!(left.contains(&("link".into(), false)), "{:?}", plan.left);
        assert_eq!(left.len(), 4, "{:?}", plan.left);
    }

    #[test]
    fn a_plaintext_only_home_needs_no_key() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("h/a"));
        let plan = plan_home(&dir.path().join("h")).unwrap();
        assert_eq!(plan.files.len(), 1);
        assert!(!plan.has_encrypted());
        assert!(plan_home(&dir.path().join("missing")).is_err());
    }
}
