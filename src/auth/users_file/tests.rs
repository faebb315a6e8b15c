//! Tests of the users file (`super`): loading, saving, validation,
//! roles and permissions, and the lock.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

/// A real hash of "pw", computed once per test binary run.
fn pw_hash() -> String {
    static HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| password::hash_password("pw").unwrap());
    HASH.clone()
}

fn load_text(text: &str) -> Result<UsersFile, UsersFileError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    fs::write(&path, text).unwrap();
    UsersFile::load(&path)
}

#[test]
fn missing_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let file = UsersFile::load(&dir.path().join("nope.toml")).unwrap();
    assert!(file.is_empty());
    assert!(load_text("# nothing yet\n").unwrap().is_empty());
}

#[test]
fn round_trip_keeps_key_lines_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/users.toml");
    let quoted = format!("from=\"10.0.0.0/8,!10.9.9.9\",no-pty {KEY} alice \"work\" laptop");
    let mut file = UsersFile::default();
    file.add_user(
        "alice",
        Some(pw_hash()),
        vec![quoted.clone(), format!("  {KEY}\n")],
    )
    .unwrap();
    file.add_user("bob", None, vec![KEY.to_owned()]).unwrap();
    file.add_user("carol", Some(pw_hash()), vec![]).unwrap();
    file.save(&path).unwrap();

    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# Managed by `dropzone user ...`"),
        "{text}"
    );

    let back = UsersFile::load(&path).unwrap();
    let names: Vec<&str> = back.users().map(|u| u.name().as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    let alice = back.get("alice").unwrap();
    assert_eq!(alice.key_lines(), [quoted, KEY.to_owned()]);
    assert_eq!(alice.keys().len(), 2);
    assert_eq!(alice.keys()[0].comment, "alice \"work\" laptop");
    assert_eq!(alice.password_hash(), Some(pw_hash().as_str()));
    assert_eq!(back.get("bob").unwrap().password_hash(), None);
    assert!(back.get("carol").unwrap().key_lines().is_empty());
    assert!(back.get("dave").is_none());

    // Saving again over the existing file leaves no temporary behind.
    back.save(&path).unwrap();
    let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn hand_written_file() {
    let text = format!(
        "# hand edited\n[[user]]\nname = \"alice\"\npassword = '{}'\n\
         authorized_keys = [\n  '{KEY} a@b',  # laptop\n]\n\n[[user]]\nname = \"bob\"\n",
        pw_hash()
    );
    let file = load_text(&text).unwrap();
    assert_eq!(file.len(), 2);
    assert!(file.get("bob").unwrap().keys().is_empty());
}

#[test]
fn duplicate_user_rejected() {
    let text = "[[user]]\nname = \"alice\"\n[[user]]\nname = \"alice\"\n";
    let err = load_text(text).unwrap_err();
    assert!(matches!(
        &err,
        UsersFileError::User { error: UserError { problem: UserProblem::Duplicate, user, .. }, .. }
            if user == "alice"
    ));
    assert!(
        err.to_string()
            .contains("users.toml: user \"alice\": appears more than once"),
        "{err}"
    );

    let mut file = UsersFile::default();
    file.add_user("alice", None, vec![]).unwrap();
    let err = file.add_user("alice", None, vec![]).unwrap_err();
    assert_eq!(err.problem, UserProblem::Exists);
}

#[test]
fn syntax_error_names_path_and_line() {
    let err = load_text("[[user]]\nname = \"alice\"\npassword = \n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UsersFileError::Syntax { .. }));
    assert!(msg.contains("users.toml"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn unknown_field_rejected() {
    let err = load_text("[[user]]\nname = \"alice\"\npasword = \"x\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pasword") && msg.contains("line 3"), "{msg}");
    let err = load_text("[[users]]\nname = \"alice\"\n").unwrap_err();
    assert!(err.to_string().contains("users"), "{err}");
}

#[test]
fn invalid_entries_name_user_and_problem() {
    let err = load_text("[[user]]\nname = \"../x\"\n").unwrap_err();
    assert!(err.to_string().contains("invalid user name"), "{err}");

    let text =
        format!("[[user]]\nname = \"bob\"\nauthorized_keys = ['{KEY}', 'command=\"ls\" {KEY}']\n");
    let msg = load_text(&text).unwrap_err().to_string();
    assert!(
        msg.contains("user \"bob\": authorized key 2: unsupported option command="),
        "{msg}"
    );

    let msg = load_text("[[user]]\nname = \"bob\"\npassword = \"hunter2\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("user \"bob\": password:"), "{msg}");
    assert!(
        !msg.contains("hunter2"),
        "the hash must not be echoed: {msg}"
    );

    let mut file = UsersFile::default();
    let err = file
        .add_user("eve", None, vec![format!("permitopen=\"x:1\" {KEY}")])
        .unwrap_err();
    assert!(matches!(err.problem, UserProblem::Key { number: 1, .. }));
    assert!(file.is_empty());
    assert!(
        file.add_user("eve", Some("plaintext".into()), vec![])
            .is_err()
    );
    assert!(file.add_user("eve", None, vec![String::new()]).is_err());
}

#[test]
fn remove() {
    let mut file = UsersFile::default();
    file.add_user("alice", None, vec![]).unwrap();
    file.add_user("bob", None, vec![]).unwrap();
    assert_eq!(file.remove_user("alice"), Ok(true));
    assert_eq!(file.remove_user("alice"), Ok(false));
    assert!(file.remove_user("../bob").is_err());
    let names: Vec<&str> = file.users().map(|u| u.name().as_str()).collect();
    assert_eq!(names, ["bob"]);
}

#[test]
fn roles_and_permissions() {
    use crate::access::Permission as P;
    let text = "[[user]]\nname = \"full\"\n\
                [[user]]\nname = \"partner\"\nrole = \"upload-only\"\npermissions = [\"overwrite\"]\n\
                [[user]]\nname = \"reader\"\nrole = \"read-only\"\n";
    let file = load_text(text).unwrap();
    assert_eq!(file.get("full").unwrap().permissions(), Permissions::all());
    let partner = file.get("partner").unwrap();
    assert_eq!(partner.access().role, Role::UploadOnly);
    assert_eq!(
        partner.permissions().to_string(),
        "list,upload,overwrite,mkdir"
    );
    assert!(!partner.permissions().contains(P::Download));
    assert_eq!(
        file.get("reader").unwrap().permissions(),
        Role::ReadOnly.permissions()
    );

    // Saved as written: no role for a user who had none.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    file.save(&path).unwrap();
    let saved = fs::read_to_string(&path).unwrap();
    assert_eq!(saved.matches("role = ").count(), 2, "{saved}");
    let back = UsersFile::load(&path).unwrap();
    for name in ["full", "partner", "reader"] {
        assert_eq!(
            back.get(name).unwrap().access(),
            file.get(name).unwrap().access(),
            "{name}"
        );
    }
}

#[test]
fn unknown_role_or_permission_names_user_and_word() {
    let msg = load_text("[[user]]\nname = \"bob\"\nrole = \"admin\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("user \"bob\": unknown role \"admin\""),
        "{msg}"
    );
    let msg = load_text("[[user]]\nname = \"bob\"\npermissions = [\"list\", \"writ\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("user \"bob\": unknown permission \"writ\""),
        "{msg}"
    );
}

#[test]
fn set_access_changes_role_and_replaces_extras() {
    use crate::access::Permission as P;
    let mut file = UsersFile::default();
    let access = UserAccess {
        role: Role::UploadOnly,
        role_written: true,
        extra: Permissions::of(&[P::Overwrite]),
    };
    file.add_user_with("partner", None, vec![], access).unwrap();
    // The role alone keeps the extras.
    let changed = file
        .set_access("partner", Some(Role::ReadOnly), None)
        .unwrap();
    assert_eq!(changed.extra, Permissions::of(&[P::Overwrite]));
    // Extras alone replace the extras and keep the role.
    let changed = file
        .set_access("partner", None, Some(Permissions::NONE))
        .unwrap();
    assert_eq!(changed.role, Role::ReadOnly);
    assert_eq!(
        file.get("partner").unwrap().permissions(),
        Role::ReadOnly.permissions()
    );
    let err = file.set_access("nobody", None, None).unwrap_err();
    assert_eq!(err.problem, UserProblem::Missing);
}

#[test]
fn lock_is_exclusive_and_beside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/users.toml");
    let held = UsersFileLock::acquire(&path).unwrap();
    assert!(dir.path().join("sub/users.toml.lock").is_file());
    let file = File::open(dir.path().join("sub/users.toml.lock")).unwrap();
    let busy = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
    assert!(busy.is_err(), "a second holder got the lock");
    drop(held);
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("free once dropped");
}

#[test]
fn debug_hides_password_hash() {
    let mut file = UsersFile::default();
    file.add_user("alice", Some(pw_hash()), vec![]).unwrap();
    let debug = format!("{file:?}");
    assert!(!debug.contains("argon2"), "{debug}");
}

#[test]
fn certificate_principals_are_checked_kept_and_set() {
    let file = load_text(
        "[[user]]\nname = \"bob\"\nprincipals = [\"ops\", \"bob@corp\", \"ops\"]\n\
         [[user]]\nname = \"carol\"\n",
    )
    .unwrap();
    assert_eq!(file.get("bob").unwrap().principals(), ["ops", "bob@corp"]);
    assert!(file.get("carol").unwrap().principals().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let mut file = file;
    file.set_principals("carol", vec!["dba".into()]).unwrap();
    file.save(&path).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("principals = [\"dba\"]"), "{text}");
    let again = UsersFile::load(&path).unwrap();
    assert_eq!(again.get("carol").unwrap().principals(), ["dba"]);
    assert_eq!(again.get("bob").unwrap().principals(), ["ops", "bob@corp"]);
    for bad in ["", "a,b", "a b", "tab\there"] {
        let text = format!("[[user]]\nname = \"bob\"\nprincipals = [{bad:?}]\n");
        let e = load_text(&text).unwrap_err().to_string();
        assert!(e.contains("bob") && e.contains("principal"), "{bad:?}: {e}");
    }
    let mut file = again;
    assert!(matches!(
        file.set_principals("nobody", vec![]),
        Err(UserError {
            problem: UserProblem::Missing,
            ..
        })
    ));
    file.set_principals("carol", vec![]).unwrap();
    assert!(file.get("carol").unwrap().principals().is_empty());
}
