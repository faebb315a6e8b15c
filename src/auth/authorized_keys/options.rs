//! The options field of an `authorized_keys` line: the comma-separated
//! `name` and `name="value"` list before the key type, OpenSSH's quoting of
//! values, and the two options Dropzone enforces (`from=`, `expiry-time=`
//! with its `YYYYMMDD[HHMM[SS]]` dates). Options the server cannot honour
//! are refused here, by name.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::address_pattern::{AddressPatterns, PatternError};

use super::{KeyLineError, echo};

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

/// The enforceable options of one line.
#[derive(Default)]
pub(super) struct Options {
    /// `from="..."`: the client addresses allowed to use the key.
    pub(super) from: Option<AddressPatterns>,
    /// `expiry-time="..."`: the last instant the key is accepted.
    pub(super) expiry: Option<SystemTime>,
}

impl Options {
    /// Parses the comma-separated options at the start of `line`, returning
    /// what follows them (the key type onwards).
    pub(super) fn parse<'a>(&mut self, line: &'a str) -> Result<&'a str, KeyLineError> {
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

/// Whether `name` is an option name OpenSSH knows of (supported or not), so
/// `cert-authority ssh-ed25519 AAAA...` is reported as a refused option.
pub(super) fn is_option_name(name: &str) -> bool {
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
    use crate::auth::authorized_keys::tests::{KEY, err, ip, with_options};

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
}
