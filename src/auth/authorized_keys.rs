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

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::PublicKey;
use russh::keys::ssh_key::Algorithm;

use crate::address_pattern::{AddressPatterns, PatternError};

/// Options accepted without effect: each denies or grants something the
/// server never provides (port forwarding, agent and X11 forwarding, a pty,
/// `~/.ssh/rc`), so honouring them is automatic.
const NO_OP_OPTIONS: &[&str] = &[
    "restrict",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-pty",
    "no-user-rc",
    "port-forwarding",
    "pty",
];

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

/// The enforceable options of one line.
#[derive(Default)]
struct Options {
    from: Option<AddressPatterns>,
    expiry: Option<SystemTime>,
}

impl Options {
    /// Parses the comma-separated options at the start of `line`, returning
    /// what follows them (the key type onwards).
    fn parse<'a>(&mut self, line: &'a str) -> Result<&'a str, KeyLineError> {
        let bytes = line.as_bytes();
        let mut pos = 0;
        loop {
            let name_end = line[pos..]
                .find(['=', ',', ' ', '\t'])
                .map_or(line.len(), |i| pos + i);
            let name = &line[pos..name_end];
            if name.is_empty() {
                return Err(bad_option("(empty)", "empty option name"));
            }
            pos = name_end;
            let value = if bytes.get(pos) == Some(&b'=') {
                let (value, end) = dequote(line, pos + 1).map_err(|why| bad_option(name, why))?;
                pos = end;
                Some(value)
            } else {
                None
            };
            self.apply(name, value)?;
            match bytes.get(pos) {
                Some(b',') => pos += 1,
                Some(b' ' | b'\t') => return Ok(&line[pos..]),
                None => return Err(KeyLineError::MissingKey),
                Some(_) => return Err(bad_option(name, "expected `,` or a space after the value")),
            }
        }
    }

    fn apply(&mut self, name: &str, value: Option<String>) -> Result<(), KeyLineError> {
        // OpenSSH compares option names case-insensitively.
        let lower = name.to_ascii_lowercase();
        match (lower.as_str(), value) {
            (flag, None) if NO_OP_OPTIONS.contains(&flag) => Ok(()),
            (flag, Some(_)) if NO_OP_OPTIONS.contains(&flag) => {
                Err(bad_option(name, "takes no value"))
            }
            ("from", Some(list)) => {
                if self.from.is_some() {
                    return Err(bad_option(name, "given more than once"));
                }
                let patterns = AddressPatterns::parse(&list)
                    .map_err(|e: PatternError| bad_option(name, &e.to_string()))?;
                self.from = Some(patterns);
                Ok(())
            }
            ("expiry-time", Some(text)) => {
                if self.expiry.is_some() {
                    return Err(bad_option(name, "given more than once"));
                }
                self.expiry = Some(parse_expiry(&text).map_err(|why| bad_option(name, why))?);
                Ok(())
            }
            ("from" | "expiry-time", None) => Err(bad_option(name, "needs a quoted value")),
            (_, value) => Err(KeyLineError::UnsupportedOption(format!(
                "{}{}",
                echo(name),
                if value.is_some() { "=" } else { "" }
            ))),
        }
    }
}

fn bad_option(name: &str, reason: &str) -> KeyLineError {
    KeyLineError::BadOption {
        option: echo(name),
        reason: reason.to_owned(),
    }
}

/// Reads a double-quoted value starting at byte `start` of `line`. As in
/// OpenSSH, `\"` stands for a quote and every other character (commas,
/// spaces, other backslashes) is literal. Returns the value and the byte
/// position just after the closing quote.
fn dequote(line: &str, start: usize) -> Result<(String, usize), &'static str> {
    let bytes = line.as_bytes();
    if bytes.get(start) != Some(&b'"') {
        return Err("value must be in double quotes");
    }
    let mut value = String::new();
    let mut run_start = start + 1;
    let mut i = run_start;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' if bytes.get(i + 1) == Some(&b'"') => {
                value.push_str(&line[run_start..i]);
                value.push('"');
                i += 2;
                run_start = i;
            }
            b'"' => {
                value.push_str(&line[run_start..i]);
                return Ok((value, i + 1));
            }
            _ => i += 1,
        }
    }
    Err("unterminated quoted value")
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

/// Whether `name` is an option name OpenSSH knows of (supported or not), so
/// `cert-authority ssh-ed25519 AAAA...` is reported as a refused option.
fn is_option_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    NO_OP_OPTIONS.contains(&lower.as_str())
        || matches!(
            lower.as_str(),
            "cert-authority"
                | "agent-forwarding"
                | "x11-forwarding"
                | "user-rc"
                | "no-touch-required"
                | "verify-required"
        )
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

/// Parses `YYYYMMDD[HHMM[SS]]` as UTC (a trailing `Z` is accepted too).
fn parse_expiry(text: &str) -> Result<SystemTime, &'static str> {
    const FORMAT: &str = "expected YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (UTC)";
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FORMAT);
    }
    let field = |range: std::ops::Range<usize>| -> u32 {
        // Only ASCII digits, at most 4 of them: always fits.
        digits.get(range).and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = match digits.len() {
        8 => (0, 0, 0),
        12 => (field(8..10), field(10..12), 0),
        _ => (field(8..10), field(10..12), field(12..14)),
    };
    if year < 1970 {
        return Err("date before 1970");
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err("no such date");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("no such time of day");
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let secs = u64::try_from(secs).map_err(|_| "date before 1970")?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn with_options(options: &str) -> Result<AuthorizedKey, KeyLineError> {
        AuthorizedKey::parse(&format!("{options} {KEY} comment"))
    }

    fn err(line: &str) -> KeyLineError {
        AuthorizedKey::parse(line).unwrap_err()
    }

    fn ip(s: &str) -> Option<IpAddr> {
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
    fn no_op_options_are_accepted_case_insensitively() {
        let k = with_options(
            "restrict,no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty,\
             no-user-rc,port-forwarding,pty,NO-PTY",
        )
        .unwrap();
        assert!(k.permits(None, SystemTime::now()));
        assert!(matches!(
            with_options("no-pty=\"x\""),
            Err(KeyLineError::BadOption { .. })
        ));
    }

    #[test]
    fn refused_options_are_named() {
        for (options, named) in [
            ("command=\"ls\"", "command="),
            ("restrict,command=\"internal-sftp, -R\"", "command="),
            ("permitopen=\"host:22\"", "permitopen="),
            ("permitlisten=\"8080\"", "permitlisten="),
            ("principals=\"a,b\"", "principals="),
            ("environment=\"A=B\"", "environment="),
            ("tunnel=\"1\"", "tunnel="),
            ("cert-authority", "cert-authority"),
            ("no-touch-required", "no-touch-required"),
            ("verify-required", "verify-required"),
            ("agent-forwarding", "agent-forwarding"),
            ("X11-forwarding", "X11-forwarding"),
            ("user-rc", "user-rc"),
            ("no-pty,frobnicate", "frobnicate"),
        ] {
            let err = with_options(options).unwrap_err();
            assert_eq!(
                err,
                KeyLineError::UnsupportedOption(named.to_owned()),
                "{options}"
            );
        }
        let msg = with_options("command=\"ls\"").unwrap_err().to_string();
        assert_eq!(
            msg,
            "unsupported option command=: Dropzone refuses keys with options it cannot enforce"
        );
    }

    #[test]
    fn quoted_values_may_hold_commas_spaces_and_escaped_quotes() {
        let k = with_options("from=\"10.0.0.0/8, 192.0.2.*\",no-pty").unwrap();
        assert!(k.permits(ip("10.1.1.1"), SystemTime::now()));
        assert!(k.permits(ip("192.0.2.9"), SystemTime::now()));
        assert!(!k.permits(ip("198.51.100.1"), SystemTime::now()));

        // The escaped quote belongs to the refused value; parsing must get
        // past it to name the next, refused, option correctly.
        let err = with_options("environment=\"A=\\\"x,y\\\"\",command=\"a b\"").unwrap_err();
        assert_eq!(err, KeyLineError::UnsupportedOption("environment=".into()));
        assert_eq!(
            dequote(r#""a\"b,c d\x""#, 0),
            Ok((r#"a"b,c d\x"#.to_owned(), 12))
        );
    }

    #[test]
    fn malformed_options() {
        for bad in [
            "from=10.0.0.1",                  // unquoted
            "from=\"10.0.0.1",                // unterminated
            "from",                           // no value
            "from=\"*.example.com\"",         // host name
            "from=\"10.0.0.0/8\",from=\"*\"", // repeated
            "no-pty,,restrict",               // empty option
            "expiry-time=\"2024\"",
            "expiry-time=\"20240230\"",
            "expiry-time=\"202401011260\"",
        ] {
            assert!(
                matches!(with_options(bad), Err(KeyLineError::BadOption { .. })),
                "{bad}: {:?}",
                with_options(bad)
            );
        }
        assert_eq!(err("no-pty"), KeyLineError::MissingKey);
        assert!(matches!(
            err(&format!("from=\"*\"x {KEY}")),
            KeyLineError::BadOption { .. }
        ));
        assert_eq!(err("from=\"*\" "), KeyLineError::MissingKey);
    }

    #[test]
    fn from_option_with_negation_and_cidr() {
        let k = with_options("from=\"!10.9.9.9,10.0.0.0/8,2001:db8::/32,192.168.1.?\"").unwrap();
        let now = SystemTime::now();
        assert!(k.permits(ip("10.1.2.3"), now));
        assert!(!k.permits(ip("10.9.9.9"), now));
        assert!(k.permits(ip("2001:db8::42"), now));
        assert!(!k.permits(ip("2001:db9::42"), now));
        assert!(k.permits(ip("192.168.1.7"), now));
        assert!(!k.permits(ip("192.168.1.70"), now));
        assert!(!k.permits(None, now), "unknown address must fail closed");
        assert!(k.has_from_restriction());
    }

    #[test]
    fn expiry_time() {
        let k = with_options("expiry-time=\"20300102\"").unwrap();
        let expiry = UNIX_EPOCH + Duration::from_secs(1_893_542_400); // 2030-01-02T00:00:00Z
        assert_eq!(k.expiry(), Some(expiry));
        assert!(k.permits(None, expiry));
        assert!(!k.permits(None, expiry + Duration::from_secs(1)));
        assert!(k.permits(None, expiry - Duration::from_secs(86_400)));

        assert_eq!(parse_expiry("197001010000"), Ok(UNIX_EPOCH));
        assert_eq!(
            parse_expiry("20240229235959Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_709_251_199))
        );
        assert!(parse_expiry("20230229").is_err());
        assert!(parse_expiry("19691231").is_err());
        assert!(parse_expiry("2024010112").is_err());
        assert!(parse_expiry("2024-01-01").is_err());

        let old = with_options("expiry-time=\"20000101\"").unwrap();
        assert!(!old.permits(None, SystemTime::now()));
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
