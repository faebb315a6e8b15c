//! What an import tells its operator: one [`Event`] per user and per file as
//! it goes (progress), and the [`Summary`] at the end. Both print as text;
//! the CLI decides where.

use std::fmt;
use std::path::PathBuf;

/// What happened to one source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Written to the store.
    Imported {
        /// Content bytes.
        bytes: u64,
    },
    /// Would be written (dry run).
    WouldImport {
        /// Content bytes.
        bytes: u64,
    },
    /// The destination already holds the same content (an earlier run).
    Unchanged,
    /// The destination held other content and was replaced (`--overwrite`).
    Overwritten {
        /// Content bytes.
        bytes: u64,
    },
    /// Would replace other content (dry run with `--overwrite`).
    WouldOverwrite {
        /// Content bytes.
        bytes: u64,
    },
    /// The destination holds something else; left as it is.
    Conflict(String),
    /// The source could not be imported.
    Failed(String),
}

/// One step of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A user's import starts.
    UserStart {
        /// The user.
        user: String,
        /// Their legacy home.
        home: PathBuf,
    },
    /// Something the operator should know about a user (not a failure).
    UserNote {
        /// The user.
        user: String,
        /// What.
        note: String,
    },
    /// A home directory that is not imported at all.
    UserFailed {
        /// The directory's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A source file was handled.
    File {
        /// The owner.
        user: String,
        /// The legacy file.
        source: PathBuf,
        /// Its path in the user's Dropzone tree.
        dest: String,
        /// Whether the source is plaintext the original left at rest.
        plaintext: bool,
        /// What happened.
        outcome: FileOutcome,
    },
    /// A directory could not be created.
    DirFailed {
        /// The owner.
        user: String,
        /// Its path in the user's Dropzone tree.
        dest: String,
        /// Why.
        reason: String,
    },
    /// An `.enc` file not imported because its plaintext copy was.
    Superseded {
        /// The owner.
        user: String,
        /// The `.enc` file.
        enc: PathBuf,
        /// The plaintext file imported instead.
        by: PathBuf,
        /// Whether both hold the same content, or why that is unknown.
        same: Result<bool, String>,
    },
    /// An entry of a home that is not imported.
    Left {
        /// The owner (or the home's name).
        user: String,
        /// The entry.
        path: PathBuf,
        /// Why.
        reason: String,
        /// Whether it may hold data (an error) or not (a warning).
        data: bool,
    },
    /// An original key file whose user has no home directory.
    OrphanKey {
        /// The key file.
        path: PathBuf,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::UserStart { user, home } => write!(f, "{user}: importing {}", home.display()),
            Event::UserNote { user, note } => write!(f, "{user}: {note}"),
            Event::UserFailed { name, reason } => {
                write!(f, "{name}: ERROR: user not imported: {reason}")
            }
            Event::File {
                user,
                source,
                dest,
                plaintext,
                outcome,
            } => {
                let src = source.display();
                let flag = if *plaintext {
                    " [PLAINTEXT at rest in the source: shred it once checked]"
                } else {
                    ""
                };
                match outcome {
                    FileOutcome::Imported { bytes } => {
                        write!(
                            f,
                            "{user}: imported {dest} ({bytes} bytes) from {src}{flag}"
                        )
                    }
                    FileOutcome::WouldImport { bytes } => {
                        write!(
                            f,
                            "{user}: would import {dest} ({bytes} bytes) from {src}{flag}"
                        )
                    }
                    FileOutcome::Unchanged => {
                        write!(
                            f,
                            "{user}: unchanged {dest} (already imported from {src}){flag}"
                        )
                    }
                    FileOutcome::Overwritten { bytes } => write!(
                        f,
                        "{user}: overwrote {dest} ({bytes} bytes) from {src}{flag}"
                    ),
                    FileOutcome::WouldOverwrite { bytes } => write!(
                        f,
                        "{user}: would overwrite {dest} ({bytes} bytes) from {src}{flag}"
                    ),
                    FileOutcome::Conflict(why) => {
                        write!(f, "{user}: CONFLICT {dest} (from {src}): {why}{flag}")
                    }
                    FileOutcome::Failed(why) => {
                        write!(f, "{user}: ERROR {src} (for {dest}): {why}{flag}")
                    }
                }
            }
            Event::DirFailed { user, dest, reason } => {
                write!(f, "{user}: ERROR directory {dest}: {reason}")
            }
            Event::Superseded {
                user,
                enc,
                by,
                same,
            } => {
                let how = match same {
                    Ok(true) => "same content".to_owned(),
                    Ok(false) => "DIFFERENT content: the encrypted copy is kept only in the source"
                        .to_owned(),
                    Err(e) => format!("not compared: {e}"),
                };
                write!(
                    f,
                    "{user}: not imported {} (the plaintext {} was imported instead; {how})",
                    enc.display(),
                    by.display()
                )
            }
            Event::Left {
                user,
                path,
                reason,
                data,
            } => {
                let level = if *data { "ERROR" } else { "skipped" };
                write!(f, "{user}: {level} {}: {reason}", path.display())
            }
            Event::OrphanKey { path } => write!(
                f,
                "note: key file {} matches no home directory (no files to import)",
                path.display()
            ),
        }
    }
}

/// Totals and the lists an operator must act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Nothing was written.
    pub dry_run: bool,
    /// Users whose home was processed (possibly with file errors), in order.
    pub users: Vec<String>,
    /// Homes not imported at all, with the reason.
    pub users_failed: Vec<String>,
    /// Files written (or that would be, in a dry run).
    pub files_imported: u64,
    /// Content bytes of those files.
    pub bytes_imported: u64,
    /// Files replaced with `--overwrite` (or that would be).
    pub files_overwritten: u64,
    /// Files already imported by an earlier run.
    pub files_unchanged: u64,
    /// Destinations left as they were because they hold other content.
    pub conflicts: Vec<String>,
    /// Files and directories that could not be imported.
    pub errors: Vec<String>,
    /// Plaintext files found at rest in the source.
    pub plaintext: Vec<PathBuf>,
    /// `.enc` files not imported because their plaintext copy was.
    pub superseded: Vec<String>,
    /// Entries skipped that hold no data (symlinks, special files).
    pub skipped: Vec<String>,
    /// Original key files that match no home directory.
    pub orphan_keys: Vec<PathBuf>,
}

impl Summary {
    /// Adds an event to the totals.
    pub fn record(&mut self, event: &Event) {
        match event {
            Event::UserStart { user, .. } => self.users.push(user.clone()),
            Event::UserNote { .. } => {}
            Event::UserFailed { name, reason } => {
                // A user that fails after starting is not counted as processed.
                if self.users.last() == Some(name) {
                    self.users.pop();
                }
                self.users_failed.push(format!("{name}: {reason}"));
            }
            Event::File {
                source,
                dest,
                plaintext,
                outcome,
                user,
            } => {
                if *plaintext {
                    self.plaintext.push(source.clone());
                }
                match outcome {
                    FileOutcome::Imported { bytes } | FileOutcome::WouldImport { bytes } => {
                        self.files_imported += 1;
                        self.bytes_imported += bytes;
                    }
                    FileOutcome::Overwritten { bytes } | FileOutcome::WouldOverwrite { bytes } => {
                        self.files_overwritten += 1;
                        self.bytes_imported += bytes;
                    }
                    FileOutcome::Unchanged => self.files_unchanged += 1,
                    FileOutcome::Conflict(why) => self
                        .conflicts
                        .push(format!("{user} {dest} (from {}): {why}", source.display())),
                    FileOutcome::Failed(why) => self
                        .errors
                        .push(format!("{user} {}: {why}", source.display())),
                }
            }
            Event::DirFailed { user, dest, reason } => {
                self.errors
                    .push(format!("{user} directory {dest}: {reason}"));
            }
            Event::Superseded { .. } => self.superseded.push(event.to_string()),
            Event::Left {
                path,
                reason,
                data,
                user,
            } => {
                let line = format!("{user} {}: {reason}", path.display());
                if *data {
                    self.errors.push(line);
                } else {
                    self.skipped.push(line);
                }
            }
            Event::OrphanKey { path } => self.orphan_keys.push(path.clone()),
        }
    }

    /// Whether anything was not carried over: a failed user, a conflict or
    /// an error (the command then exits non-zero).
    pub fn failed(&self) -> bool {
        !self.users_failed.is_empty() || !self.conflicts.is_empty() || !self.errors.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (would, imported, overwritten) = if self.dry_run {
            ("would be ", "would be imported", "would be overwritten")
        } else {
            ("", "imported", "overwritten")
        };
        if self.dry_run {
            writeln!(f, "import-legacy summary (dry run: nothing was written)")?;
        } else {
            writeln!(f, "import-legacy summary")?;
        }
        writeln!(
            f,
            "  users: {} processed, {} not imported",
            self.users.len(),
            self.users_failed.len()
        )?;
        writeln!(
            f,
            "  files: {} {imported} ({} bytes), {} {overwritten}, {} already imported, \
             {} conflict(s), {} error(s), {} plaintext found, {} skipped",
            self.files_imported,
            self.bytes_imported,
            self.files_overwritten,
            self.files_unchanged,
            self.conflicts.len(),
            self.errors.len(),
            self.plaintext.len(),
            self.skipped.len(),
        )?;
        let list = |f: &mut fmt::Formatter<'_>, title: &str, items: &[String]| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {title}:")?;
            for i in items {
                writeln!(f, "    {i}")?;
            }
            Ok(())
        };
        list(f, "users not imported", &self.users_failed)?;
        if !self.plaintext.is_empty() {
            writeln!(
                f,
                "  PLAINTEXT found at rest in the source ({} file(s); {would}imported like the others: \
                 shred these once the import is checked):",
                self.plaintext.len()
            )?;
            for p in &self.plaintext {
                writeln!(f, "    {}", p.display())?;
            }
        }
        list(
            f,
            "encrypted copies not imported (superseded by their plaintext)",
            &self.superseded,
        )?;
        list(
            f,
            "conflicts (destination left as it was; --overwrite replaces it)",
            &self.conflicts,
        )?;
        list(f, "errors", &self.errors)?;
        list(f, "skipped (no data)", &self.skipped)?;
        if !self.orphan_keys.is_empty() {
            writeln!(
                f,
                "  {} key file(s) match no home directory (users with no files)",
                self.orphan_keys.len()
            )?;
        }
        Ok(())
    }
}
