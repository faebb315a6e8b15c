//! Parses arbitrary text as a users file (`dropzone::auth::users_file`,
//! TOML) through the same function `UsersFile::load` uses.
//!
//! Checked: no panic; an accepted file has unique user names, each found by
//! `get`, and as many parsed keys as key lines; a refusal names the file.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use dropzone::auth::users_file::UsersFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // `load` refuses non-UTF-8 files before parsing.
        return;
    };
    let path = Path::new("/fuzz/users.toml");
    match UsersFile::from_text(text, path) {
        Ok(file) => {
            let mut names = HashSet::new();
            for user in file.users() {
                assert!(
                    names.insert(user.name().as_str().to_owned()),
                    "duplicate user"
                );
                let found = file
                    .get(user.name().as_str())
                    .expect("get finds a listed user");
                assert_eq!(found.name(), user.name());
                assert_eq!(user.keys().len(), user.key_lines().len());
            }
            assert_eq!(names.len(), file.len());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("/fuzz/users.toml"), "{message}");
        }
    }
});
