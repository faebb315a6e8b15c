//! The layer map in `src/lib.rs` is true: each module uses only the modules
//! listed below it there.
//!
//! The order comes from the map itself (its ``- [`module`]`` bullets, then
//! the private modules its "Below them all" paragraph names), the uses from
//! every `crate::module` path in the module's source outside comments. A
//! module missing from the map, or a use of a module listed above, fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in map order, from the crate documentation of
/// `lib.rs`.
fn map_order(lib: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut below_all = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim_start();
        if let Some(rest) = doc.strip_prefix("- [`") {
            if let Some((name, _)) = rest.split_once('`') {
                order.push(name.to_owned());
            }
        } else if doc.starts_with("Below them all") {
            below_all = true;
        }
        if below_all {
            // Private modules are named in plain backticks.
            for name in doc.split('`').skip(1).step_by(2) {
                if !order.iter().any(|n| n == name) {
                    order.push(name.to_owned());
                }
            }
            if doc.is_empty() {
                below_all = false;
            }
        }
    }
    order
}

/// The modules `lib.rs` declares.
fn declared(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// The `.rs` files of module `name`.
fn files_of(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src().join(format!("{name}.rs"));
    if file.is_file() {
        out.push(file);
    }
    let mut dirs = vec![src().join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The top-level modules a source text names as `crate::NAME`, outside
/// `//` comments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Where the sources break the layering that `lib` (the text of lib.rs)
/// states.
fn problems(lib: &str) -> Vec<String> {
    let modules = declared(lib);
    // The "Below them all" paragraph may name other things than modules.
    let order: Vec<String> = map_order(lib)
        .into_iter()
        .filter(|m| modules.contains(m))
        .collect();
    assert!(
        modules.len() > 10 && order.len() > 10,
        "lib.rs: found {} modules and a map of {}",
        modules.len(),
        order.len()
    );
    let mut problems = Vec::new();
    for module in &modules {
        if !order.contains(module) {
            problems.push(format!("`{module}` is not in the map"));
        }
    }
    for (rank, module) in order.iter().enumerate() {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&text) {
                if used == *module {
                    continue;
                }
                match order.iter().position(|m| *m == used) {
                    Some(r) if r > rank => {}
                    _ => problems.push(format!(
                        "{}: `{module}` uses `crate::{used}`, which the map does not list below it",
                        file.strip_prefix(src()).unwrap_or(&file).display()
                    )),
                }
            }
        }
    }
    problems
}

fn lib_rs() -> String {
    std::fs::read_to_string(src().join("lib.rs")).unwrap()
}

#[test]
fn each_module_uses_only_the_modules_below_it_in_the_lib_rs_map() {
    let problems = problems(&lib_rs());
    assert!(
        problems.is_empty(),
        "src/lib.rs says each module uses only the ones listed below it:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_module_listed_above_its_users_is_found() {
    // The map with `config` moved to the top: `auth`, `ssh` and `upload`
    // use it from below.
    let lib = lib_rs();
    let lines: Vec<&str> = lib.lines().collect();
    let bullet = |l: &&str| l.starts_with("//! - [`");
    let first = lines.iter().position(bullet).expect("lib.rs has a map");
    let start = lines
        .iter()
        .position(|l| l.starts_with("//! - [`config`]"))
        .expect("lib.rs has a config bullet");
    let end = start
        + 1
        + lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with("//!   "))
            .count();
    let mut moved = lines[..first].to_vec();
    moved.extend(&lines[start..end]);
    moved.extend(&lines[first..start]);
    moved.extend(&lines[end..]);
    let found = problems(&moved.join("\n"));
    assert!(
        found
            .iter()
            .any(|p| p.contains("`auth` uses `crate::config`")),
        "{found:?}"
    );
}

#[test]
fn the_map_reader_finds_bullets_and_private_modules() {
    let lib = "//! - [`ssh`]: a\n//!   more\n//! - [`store`]: b\n//!\n\
               //! Below them all, `sync` holds `lock`, and `atomic_file`\n//! files.\n//!\n\
               //! Never `jail`.\npub mod ssh;\nmod sync;\n";
    assert_eq!(
        map_order(lib),
        ["ssh", "store", "sync", "lock", "atomic_file"]
    );
    assert_eq!(
        declared(lib),
        BTreeSet::from(["ssh".to_owned(), "sync".to_owned()])
    );
    assert_eq!(
        uses("use crate::store::X; // crate::jail\nlet _ = crate::keys::f();"),
        BTreeSet::from(["store".to_owned(), "keys".to_owned()])
    );
}
