//! docs/CONFIG.md documents every key both programs accept.
//!
//! The keys come from the configuration parsers themselves, not from a list
//! kept here: every table is parsed with an unknown key in it, and serde's
//! error ("unknown field `x`, expected one of `a`, `b`") names the keys the
//! table accepts; a key that is itself a table answers the same probe, and
//! is walked in turn. A key added to the code without a row in the
//! reference fails here, and so does a row for a key the code no longer
//! accepts. The environment variables the product reads (`DROPZONE_*` in
//! `src/`) must be named there too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The unknown key the probes add.
const PROBE: &str = "dropzone_doc_probe";

/// A program's configuration parser, as text in, error text out.
type Parse = fn(&str) -> Result<(), String>;

fn parse_dropzone(text: &str) -> Result<(), String> {
    dropzone::config::Config::parse(text).map(drop)
}

fn parse_eaas(text: &str) -> Result<(), String> {
    dropzone::eaas::config::Config::parse(text).map(drop)
}

/// The two programs, by the name their section of CONFIG.md carries.
const PROGRAMS: &[(&str, Parse)] = &[("dropzone", parse_dropzone), ("dropzone-eaas", parse_eaas)];

/// Tables (dotted paths, "" for the top level) and the plain keys of each.
type Keys = BTreeMap<String, BTreeSet<String>>;

/// The names between backticks in `text`, in order.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys the table at `path` accepts, or `None` when `path` is not a
/// table (the probe then fails some other way, or not at all).
fn accepted_keys(parse: Parse, path: &str) -> Option<Vec<String>> {
    let header = if path.is_empty() {
        String::new()
    } else {
        format!("[{path}]\n")
    };
    let error = parse(&format!("{header}{PROBE} = 1\n")).err()?;
    let marker = format!("unknown field `{PROBE}`, expected ");
    let at = error.find(&marker)?;
    let list = error[at + marker.len()..].lines().next().unwrap_or("");
    let keys = backticked(list);
    assert!(
        !keys.is_empty(),
        "[{path}]: no key names in serde's message: {error}"
    );
    Some(keys)
}

/// Every table of a program's configuration and its plain keys, as the
/// parser reports them.
fn code_keys(program: &str, parse: Parse) -> Keys {
    let mut keys = Keys::new();
    let mut tables = vec![String::new()];
    while let Some(path) = tables.pop() {
        let accepted = accepted_keys(parse, &path).unwrap_or_else(|| {
            panic!(
                "{program}: the probe of [{path}] did not produce serde's unknown-field \
                 message; the configuration parser no longer rejects unknown keys, or \
                 the message changed: {:?}",
                parse(&format!("{PROBE} = 1\n"))
            )
        });
        let plain = keys.entry(path.clone()).or_default();
        for key in accepted {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if accepted_keys(parse, &child).is_some() {
                tables.push(child);
            } else {
                plain.insert(key);
            }
        }
    }
    keys
}

/// What CONFIG.md documents, per program: `## \`PROGRAM\`...` sections
/// hold `### Top level` and `### \`[TABLE]\`` sections, whose table rows
/// start with `| \`KEY\` |`.
fn documented_keys(doc: &str) -> BTreeMap<String, Keys> {
    let mut out: BTreeMap<String, Keys> = BTreeMap::new();
    let mut program: Option<String> = None;
    let mut table: Option<String> = None;
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            program = backticked(heading)
                .into_iter()
                .next()
                .filter(|name| PROGRAMS.iter().any(|(p, _)| p == name));
            table = None;
        } else if let Some(heading) = line.strip_prefix("### ") {
            table = if heading.trim() == "Top level" {
                Some(String::new())
            } else {
                backticked(heading)
                    .into_iter()
                    .next()
                    .and_then(|t| Some(t.strip_prefix('[')?.strip_suffix(']')?.to_owned()))
            };
            if let (Some(p), Some(t)) = (&program, &table) {
                out.entry(p.clone())
                    .or_default()
                    .entry(t.clone())
                    .or_default();
            }
        } else if let (Some(p), Some(t), Some(row)) = (&program, &table, line.strip_prefix("| `"))
            && let Some((key, _)) = row.split_once('`')
        {
            out.entry(p.clone())
                .or_default()
                .entry(t.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }
    out
}

fn show(table: &str) -> String {
    if table.is_empty() {
        "top level".to_owned()
    } else {
        format!("[{table}]")
    }
}

fn config_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIG.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_configuration_key_is_documented_in_config_md() {
    let documented = documented_keys(&config_doc());
    let mut problems = Vec::new();
    for &(program, parse) in PROGRAMS {
        let code = code_keys(program, parse);
        // The walk must have found the tables every build has; if it found
        // less, the probe is broken and the comparison below proves nothing.
        let expected_tables: &[&str] = if program == "dropzone" {
            &["", "auth", "kms", "kms.local", "kms.eaas", "sftp", "limits"]
        } else {
            &["", "tls", "pkcs11"]
        };
        for table in expected_tables {
            assert!(
                code.get(*table).is_some_and(|keys| !keys.is_empty()),
                "{program}: the walk found no keys in {}: {code:?}",
                show(table)
            );
        }
        let empty = Keys::new();
        let docs = documented.get(program).unwrap_or(&empty);
        for (table, keys) in &code {
            let Some(rows) = docs.get(table) else {
                problems.push(format!(
                    "{program}: {} has no section in docs/CONFIG.md",
                    show(table)
                ));
                continue;
            };
            for key in keys.difference(rows) {
                problems.push(format!(
                    "{program}: {} key `{key}` is accepted but not documented",
                    show(table)
                ));
            }
        }
        for (table, rows) in docs {
            match code.get(table) {
                None => problems.push(format!(
                    "{program}: docs/CONFIG.md documents {}, which the code does not accept",
                    show(table)
                )),
                Some(keys) => {
                    for key in rows.difference(keys) {
                        problems.push(format!(
                            "{program}: docs/CONFIG.md documents {} key `{key}`, which the \
                             code does not accept",
                            show(table)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/CONFIG.md is out of step with the configuration parsers (document each key \
         as a table row starting with its name in backticks, under the heading that names \
         its table, with its default, meaning and an example):\n  {}",
        problems.join("\n  ")
    );
}

/// Variables only tests read.
fn test_only(name: &str) -> bool {
    name.starts_with("DROPZONE_TEST_") || name == "DROPZONE_REGEN_VECTORS"
}

/// Every `DROPZONE_*` name in the `.rs` files under `dir`.
fn env_names_under(dir: &Path, names: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            env_names_under(&path, names);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("DROPZONE_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // A bare prefix is a name built at run time, not a variable.
                if !name.ends_with('_') {
                    names.insert(name);
                }
            }
        }
    }
}

#[test]
fn every_environment_variable_is_documented_in_config_md() {
    let mut names = BTreeSet::new();
    env_names_under(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    assert!(
        names.contains("DROPZONE_CONFIG") && names.contains("DROPZONE_LISTEN"),
        "the scan of src/ found too little: {names:?}"
    );
    let doc = config_doc();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !test_only(n) && !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "environment variables read in src/ but not named in docs/CONFIG.md: {missing:?}"
    );
}

#[test]
fn the_doc_parser_reads_sections_and_rows() {
    let doc = "## Environment\n| `DROPZONE_X` | x |\n## `dropzone`: f\n### Top level\n\
               | `listen` | a |\n### `[kms.eaas]`\n| key | default |\n|---|---|\n| `url` | b |\n\
               ## `dropzone-eaas`: g\n### `[tls]`\n| `cert_file` | c |\n";
    let d = documented_keys(doc);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d["dropzone"][""], BTreeSet::from(["listen".to_owned()]));
    assert_eq!(
        d["dropzone"]["kms.eaas"],
        BTreeSet::from(["url".to_owned()])
    );
    assert_eq!(
        d["dropzone-eaas"]["tls"],
        BTreeSet::from(["cert_file".to_owned()])
    );
}

/// The algorithms `[ssh] KEY` accepts, from the error an unknown name gets.
fn supported_algorithms(key: &str) -> BTreeSet<String> {
    let error = dropzone::config::Config::parse(&format!("[ssh]\n{key} = [\"{PROBE}\"]\n"))
        .err()
        .unwrap_or_else(|| panic!("[ssh] {key}: an unknown algorithm was accepted"));
    let (_, list) = error
        .split_once("supported: ")
        .unwrap_or_else(|| panic!("[ssh] {key}: no list of supported algorithms in {error:?}"));
    list.lines()
        .next()
        .unwrap_or("")
        .split(", ")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_supported_algorithms_in_config_md_are_those_the_server_accepts() {
    let doc = config_doc();
    let mut problems = Vec::new();
    for key in ["kex", "ciphers", "macs", "host_key_algorithms"] {
        let supported = supported_algorithms(key);
        assert!(supported.len() > 1, "[ssh] {key}: {supported:?}");
        // The row of the "supported" table: the key, then the names.
        let row = doc
            .lines()
            .filter(|l| l.starts_with(&format!("| `{key}` |")))
            .map(|l| backticked(l).into_iter().skip(1).collect::<BTreeSet<_>>())
            .find(|names| names.intersection(&supported).count() == supported.len());
        match row {
            None => problems.push(format!(
                "[ssh] {key}: no row lists every supported algorithm: {supported:?}"
            )),
            Some(names) => {
                for extra in names.difference(&supported) {
                    problems.push(format!(
                        "[ssh] {key}: `{extra}` is listed but not supported"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/CONFIG.md:\n  {}",
        problems.join("\n  ")
    );
}
