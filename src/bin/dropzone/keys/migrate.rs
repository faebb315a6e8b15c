//! `dropzone keys migrate`: moves every user's key from the configured
//! backend to the one another configuration names, in two steps (see
//! `dropzone::keys::migrate`): add the new backend's wrapping to every key
//! file, then, with `--finish`, drop the others. Both configurations must
//! keep keys in the same place: the same `keks_dir`, or the same bucket and
//! prefix (`[storage] backend = "s3"`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dropzone::config::{Config, S3Config, StorageConfig};
use dropzone::daemon::ConfigFailure;
use dropzone::keys::{Migrated, UserKeys};
use dropzone::username::UserName;

use crate::setup::{key_wrapper, user_keys_with};

/// Step 1: adds `new`'s backend's wrapping to every user's key file, which
/// `old`'s backend unwraps. Step 2 (`finish`): on `new`'s keys, keeps only
/// its backend's wrapping.
pub fn migrate(old: &Config, new_path: &Path, finish: bool) -> anyhow::Result<ExitCode> {
    let new = Config::load(new_path).map_err(|e| ConfigFailure(e.to_string()))?;
    if let Some(why) = other_key_files(old, &new) {
        return Err(ConfigFailure(format!(
            "the two configurations name {why}: servers on both must read the same key files"
        ))
        .into());
    }
    let new_wrapper = key_wrapper(&new)?;
    if finish {
        let keys = user_keys_with(&new, new_wrapper.clone())?;
        let backend = new_wrapper.backend();
        return each_user(
            &keys,
            "finished",
            |user| keys.finish_migration(user),
            &format!("only the {backend} wrapping kept"),
        );
    }
    let old_wrapper = key_wrapper(old)?;
    println!(
        "adding {} wrappings ({}) to keys wrapped by {}",
        new_wrapper.backend(),
        new_wrapper.current(),
        old_wrapper.backend()
    );
    let keys = user_keys_with(old, old_wrapper)?;
    let code = each_user(
        &keys,
        "migrated",
        |user| keys.add_wrapping(user, new_wrapper.as_ref()),
        &format!("{} wrapping added", new_wrapper.backend()),
    )?;
    if code == ExitCode::SUCCESS {
        println!(
            "next: run every server with {}, run this command again (it catches users created \
             meanwhile), then run it with --finish",
            new_path.display()
        );
    }
    Ok(code)
}

/// Runs `step` for every user with a key file, printing one line per user
/// with the progress "N/M users" and a summary; exit 1 if any failed.
fn each_user(
    keys: &UserKeys,
    verb: &str,
    step: impl Fn(&UserName) -> Result<Migrated, dropzone::keys::KeyError>,
    done_means: &str,
) -> anyhow::Result<ExitCode> {
    let users = keys.users()?;
    let total = users.len();
    let (mut done, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    for (i, user) in users.iter().enumerate() {
        let n = i + 1;
        match step(user) {
            Ok(Migrated::Done) => {
                done += 1;
                println!("{verb} {user} ({n}/{total} users)");
            }
            Ok(Migrated::Already) => {
                skipped += 1;
                println!("skipped {user} (already done) ({n}/{total} users)");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {user}: {e} ({n}/{total} users)");
            }
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "{total} user(s): {done} {verb} ({done_means}), {skipped} already done, {failed} failed"
    );
    if failed > 0 {
        eprintln!("dropzone: {failed} user(s) failed; run the command again to retry them");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// How `old` and `new` keep user keys in different places, if they do:
/// the same `keks_dir`, or (with `[storage] backend = "s3"`) the same
/// bucket and prefix at the same endpoint.
fn other_key_files(old: &Config, new: &Config) -> Option<String> {
    match (&old.storage, &new.storage) {
        (StorageConfig::Local, StorageConfig::Local) => (!same_dir(&old.keks_dir, &new.keks_dir))
            .then(|| {
                format!(
                    "different keks_dir ({} and {})",
                    old.keks_dir.display(),
                    new.keks_dir.display()
                )
            }),
        (StorageConfig::S3(a), StorageConfig::S3(b)) => {
            let place = |s: &S3Config| {
                format!(
                    "s3://{}/{} at {}",
                    s.bucket,
                    s.prefix,
                    s.endpoint.as_deref().unwrap_or("AWS")
                )
            };
            (place(a) != place(b))
                .then(|| format!("different key stores ({} and {})", place(a), place(b)))
        }
        _ => Some("different storage backends (local and s3)".to_owned()),
    }
}

/// Whether two configured directories are the same (compared resolved
/// when both exist, as written otherwise).
fn same_dir(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    a == b || resolve(a) == resolve(b)
}
