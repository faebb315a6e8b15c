//! OpenSSH `authorized_keys` lines: `[options] keytype base64 [comment]`.
//!
//! Dropzone accepts only the options it can honour. `from="..."` and
//! `expiry-time="..."` are enforced by [`AuthorizedKey::permits`]; the
//! forwarding and terminal options (`restrict`, `no-pty`, `port-forwarding`,
//! ...) are accepted and ignored because the server never offers forwarding,
//! agents, X11 or user rc files whatever they say. Every other option
//! (`command=`, `principals=`, `cert-authority`, `environment=`, FIDO flags,
//! ...) would restrict or change a login in a way we cannot enforce, so the
//! whole line is refused rather than silently widened.
//!
//! This file splits a line into its fields, decodes the key, and answers
//! whether a key matches and permits a login; the options field (OpenSSH's
//! quoting, `from=`, `expiry-time=`, the accepted and the refused names) is
//! parsed by the private `options` submodule.

use std::net::IpAddr;
use std::time::SystemTime;

use russh::keys::PublicKey;
use russh::keys::ssh_key::Algorithm;

use crate::address_pattern::AddressPatterns;

mod options;

use options::{Options, is_option_name};

/// Longest option name echoed back in an error, so a garbage line does not
/// produce a garbage-sized message.
const MAX_ECHO: usize = 64;
/// Longest key decoder message repeated in an error, in characters.
const MAX_REASON: usize = 160;

/// One parsed `authorized_keys` entry.
#[derive(Clone, Debug)]
pub struct AuthorizedKey {
    /// The public key (its comment set to [`AuthorizedKey::comment`]).
    pub key: PublicKey,
    /// The free text after the key, often `user@host`; empty if none.
    pub comment: String,
    /// `from="..."`: the client addresses allowed to use this key.
    from: Option<AddressPatterns>,
    /// `expiry-time="..."`: the last instant this key is accepted.
    expiry: Option<SystemTime>,
}

/// Why an `authorized_keys` line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLineError {
    /// The line is blank or a `#` comment.
    #[error("empty line: no key")]
    Empty,
    /// The line contains a control character (NUL, CR, escape, ...).
    #[error("line contains a control character")]
    ControlCharacter,
    /// An option this server cannot enforce, named as written (with a
    /// trailing `=` if it had a value).
    #[error("unsupported option {0}: Dropzone refuses keys with options it cannot enforce")]
    UnsupportedOption(String),
    /// A supported option with a malformed or repeated value.
    #[error("option {option}: {reason}")]
    BadOption {
        /// The option's name.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The options are not followed by a key.
    #[error("no key type and key data after the options")]
    MissingKey,
    /// The key type is unknown, or a certificate (certificate authorities
    /// are not supported).
    #[error("unsupported key type {0}")]
    UnsupportedKeyType(String),
    /// The base64 key data is malformed or does not match the key type.
    #[error("invalid {key_type} key data: {reason}")]
    BadKey {
        /// The key type written on the line.
        key_type: String,
        /// The decoder's complaint.
        reason: String,
    },
}

impl AuthorizedKey {
    /// Parses one `authorized_keys` line. Leading and trailing whitespace
    /// (including a final newline) is ignored; blank and `#` lines are
    /// [`KeyLineError::Empty`].
    pub fn parse(line: &str) -> Result<AuthorizedKey, KeyLineError> {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\n' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            return Err(KeyLineError::Empty);
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(KeyLineError::ControlCharacter);
        }

        let (first, after_first) = split_field(line);
        let mut options = Options::default();
        let looks_like_key = !first.contains(['=', ','])
            && !is_option_name(first)
            && split_field(after_first).0.starts_with("AAAA");
        let key_part = if is_key_type(first) {
            line
        } else if is_certificate_type(first) || looks_like_key {
            // `type base64 ...` with a type we do not support: say so,
            // rather than call the type an unsupported option.
            return Err(KeyLineError::UnsupportedKeyType(echo(first)));
        } else {
            options.parse(line)?
        };

        let (key_type, rest) = split_field(key_part);
        let (data, comment) = split_field(rest);
        if key_type.is_empty() || data.is_empty() {
            return Err(KeyLineError::MissingKey);
        }
        if !is_key_type(key_type) {
            return Err(KeyLineError::UnsupportedKeyType(echo(key_type)));
        }
        let mut key = PublicKey::from_openssh(&format!("{key_type} {data}")).map_err(|e| {
            KeyLineError::BadKey {
                key_type: key_type.to_owned(),
                reason: one_line(&e.to_string()),
            }
        })?;
        let comment = comment.trim_end().to_owned();
        key.set_comment(comment.as_str());
        Ok(AuthorizedKey {
            key,
            comment,
            from: options.from,
            expiry: options.expiry,
        })
    }

    /// Whether this key's options allow a login from `client_ip` at `now`.
    /// A key restricted by `from=` is refused when the address is unknown.
    pub fn permits(&self, client_ip: Option<IpAddr>, now: SystemTime) -> bool {
        if let Some(expiry) = self.expiry
            && now > expiry
        {
            return false;
        }
        match (&self.from, client_ip) {
            (None, _) => true,
            (Some(patterns), Some(ip)) => patterns.allows(ip),
            (Some(_), None) => false,
        }
    }

    /// Whether `offered` is this key: compares the key material only, not
    /// the comment (and, for RSA, not the signature hash the client chose).
    pub fn matches(&self, offered: &PublicKey) -> bool {
        self.key.key_data() == offered.key_data()
    }

    /// The instant after which the key is refused (`expiry-time=`), if any.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expiry
    }

    /// Whether the key carries a `from=` address restriction (tests only:
    /// the product asks [`AuthorizedKey::permits`] instead).
    #[cfg(test)]
    pub(crate) fn has_from_restriction(&self) -> bool {
        self.from.is_some()
    }
}

/// Parses a whole `authorized_keys` text: every key that parses, and for each
/// line that does not, its 1-based line number and the reason. Blank lines
/// and `#` comments are skipped silently.
pub fn parse_file(text: &str) -> (Vec<AuthorizedKey>, Vec<(usize, KeyLineError)>) {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match AuthorizedKey::parse(line) {
            Ok(key) => keys.push(key),
            Err(e) => errors.push((index + 1, e)),
        }
    }
    (keys, errors)
}

/// The key lines of an `authorized_keys` (or `.pub`) file as
/// `dropzone user add --authorized-key` copies them into the users file:
/// trimmed, without blank lines and `#` comments. They are checked when
/// added ([`crate::auth::users_file::UsersFile::add_user`]).
pub fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Splits off the first field: text up to the first space or tab, and the
/// rest after the run of blanks that follows it.
fn split_field(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

/// A plain public key algorithm name that ssh-key decodes (`ssh-ed25519`,
/// `ssh-rsa`, `ecdsa-sha2-nistp256`, `sk-ssh-ed25519@openssh.com`, ...).
fn is_key_type(name: &str) -> bool {
    matches!(Algorithm::new(name), Ok(alg) if !matches!(alg, Algorithm::Other(_)))
}

fn is_certificate_type(name: &str) -> bool {
    name.ends_with("-cert-v01@openssh.com")
}

/// `text` shortened for an error message.
fn echo(text: &str) -> String {
    if text.chars().count() <= MAX_ECHO {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_ECHO).collect();
        short.push_str("...");
        short
    }
}

/// A decoder's message made safe to log: it may quote bytes decoded from
/// the base64 data (control characters included), so those become `?` and
/// the text is cut to [`MAX_REASON`] characters.
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_REASON)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_REASON).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A real ed25519 public key line made by OpenSSH's `ssh-keygen`.
    fn generate_key(dir: &std::path::Path, name: &str) -> String {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@dropzone", "-f"])
            .arg(&path)
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim_end()
            .to_owned()
    }

    /// A fixed valid key, for tests that only exercise options.
    pub(super) const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    pub(super) fn with_options(options: &str) -> Result<AuthorizedKey, KeyLineError> {
        AuthorizedKey::parse(&format!("{options} {KEY} comment"))
    }

    pub(super) fn err(line: &str) -> KeyLineError {
        AuthorizedKey::parse(line).unwrap_err()
    }

    pub(super) fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn real_key_parses_and_matches_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let line_a = generate_key(dir.path(), "a");
        let line_b = generate_key(dir.path(), "b");
        let a = AuthorizedKey::parse(&line_a).unwrap();
        let b = AuthorizedKey::parse(&line_b).unwrap();
        assert_eq!(a.comment, "test@dropzone");
        assert_eq!(a.key.algorithm(), Algorithm::Ed25519);

        // The client's key arrives without our comment: match on key data.
        let mut offered = PublicKey::from_openssh(&line_a).unwrap();
        offered.set_comment("something else");
        assert!(a.matches(&offered));
        assert!(!b.matches(&offered));
        assert!(a.permits(None, SystemTime::now()));

        // Same key with options, extra blanks and a trailing newline.
        let with_opts = format!("restrict,from=\"127.0.0.1\"\t {line_a}  \n");
        let c = AuthorizedKey::parse(&with_opts).unwrap();
        assert!(c.matches(&offered));
        assert!(c.permits(ip("127.0.0.1"), SystemTime::now()));
        assert!(!c.permits(ip("127.0.0.2"), SystemTime::now()));
    }

    #[test]
    fn comment_is_optional_and_may_have_spaces() {
        assert_eq!(AuthorizedKey::parse(KEY).unwrap().comment, "");
        let k = AuthorizedKey::parse(&format!("{KEY} Alice's laptop  (2024)")).unwrap();
        assert_eq!(k.comment, "Alice's laptop  (2024)");
        assert_eq!(k.key.comment().as_str_lossy(), "Alice's laptop  (2024)");
    }

    #[test]
    fn bad_keys() {
        assert_eq!(err("   "), KeyLineError::Empty);
        assert_eq!(err("# ssh-ed25519 AAAA"), KeyLineError::Empty);
        assert_eq!(
            err("ssh-foo AAAAB3NzaC1yc2E x"),
            KeyLineError::UnsupportedKeyType("ssh-foo".into())
        );
        assert_eq!(
            err("ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1l x"),
            KeyLineError::UnsupportedKeyType("ssh-ed25519-cert-v01@openssh.com".into())
        );
        assert_eq!(
            err(&format!("cert-authority {KEY}")),
            KeyLineError::UnsupportedOption("cert-authority".into())
        );
        assert!(matches!(
            AuthorizedKey::parse("ssh-ed25519 AAAA!!notbase64"),
            Err(KeyLineError::BadKey { .. })
        ));
        // An RSA blob labelled ed25519.
        assert!(matches!(
            AuthorizedKey::parse("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7"),
            Err(KeyLineError::BadKey { .. })
        ));
        assert_eq!(err("ssh-ed25519"), KeyLineError::MissingKey);
        assert_eq!(err(&format!("{KEY} a\0b")), KeyLineError::ControlCharacter);
    }

    /// Found by the `authorized_keys` fuzz target: the key decoder's
    /// message quoted a decoded label holding a carriage return.
    #[test]
    fn decoder_messages_are_single_short_lines() {
        let line = "ssh-rsa AAAAB3NzTw15aC1yc2EAAAADAQABAAAAgQDET/KzIFj1cKZfbr4jlbIQ7aiphGzsVQbhPkWRrFhOKJ6rtkTw15hoh8vK5TLDETHtP/gzbVsJYd/wBFqzM0FvIhmtuTm0fQM6a9i6q8GU8e4VCC8N56Vg8RlhB5z6tq+SGhIcy9GAYxdmxayFIXGJa3Ebzne/PUUcvoSWOkAyIw== seed@host";
        let message = err(line).to_string();
        assert!(message.starts_with("invalid ssh-rsa key data"), "{message}");
        assert!(!message.chars().any(char::is_control), "{message:?}");
        let long = format!("x{}", "\u{7}".repeat(500));
        assert_eq!(one_line(&long).chars().count(), MAX_REASON + 3);
        assert!(!one_line(&long).chars().any(char::is_control));
    }

    #[test]
    fn whole_file() {
        let text = format!(
            "# keys\n\n{KEY} one\n   # indented comment\ncommand=\"x\" {KEY}\n\
             from=\"192.0.2.0/24\" {KEY} two\r\nssh-ed25519 AAAA\n"
        );
        let (keys, errors) = parse_file(&text);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].comment, "two");
        let lines: Vec<usize> = errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [5, 7]);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        for line in [
            "\"",
            "=",
            ",",
            "a=\"",
            "a=\"\\",
            "a=\"\\\"",
            "from=\"\"",
            "from=\",\"",
            "é=\"é\" x y",
            "from=\"!\" ssh-ed25519 AAAA",
            "\t\t",
            "restrict ",
            "restrict,",
        ] {
            let _ = AuthorizedKey::parse(line);
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(line in "[a-zA-Z0-9=\",!*?./:\\ \t#-]{0,80}") {
            let _ = AuthorizedKey::parse(&line);
            let _ = AuthorizedKey::parse(&format!("{line} {KEY}"));
        }

        #[test]
        fn parse_never_panics_on_any_text(line in "\\PC{0,120}") {
            let _ = parse_file(&line);
        }
    }

    #[test]
    fn key_lines_drop_blanks_and_comments_and_trim() {
        let text = "# alice's keys\n\n  ssh-ed25519 AAAA a@b  \r\n\t\n#ssh-rsa B\nfrom=\"10.0.0.0/8\" ssh-ed25519 C\n";
        assert_eq!(
            key_lines(text).collect::<Vec<_>>(),
            ["ssh-ed25519 AAAA a@b", "from=\"10.0.0.0/8\" ssh-ed25519 C"]
        );
        assert_eq!(key_lines("").count(), 0);
    }
}
