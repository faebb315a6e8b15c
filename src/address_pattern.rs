//! Address lists: an authorized key's `from="..."` option and the sources
//! exempt from failure penalties (`[limits] penalty_exempt`), shared by
//! [`crate::auth`] and [`crate::config`] from below both.
//!
//! OpenSSH matches `from=` against the client's host name and address; we
//! have no trusted host name (reverse DNS is the client's to forge), so we
//! match addresses only, and refuse patterns that could only ever match a
//! host name. Refusing them matters for negations: `!*.evil.example` would
//! otherwise silently never deny.

use std::fmt;
use std::net::IpAddr;

/// A parsed `from=` pattern list: comma-separated entries, each an address,
/// a CIDR block (`10.0.0.0/8`, `2001:db8::/32`) or a wildcard pattern (`*`,
/// `?`) matched against the address's text, optionally negated with `!`.
#[derive(Clone, PartialEq, Eq)]
pub struct AddressPatterns {
    entries: Vec<Entry>,
    /// The list as written, for messages and `Debug`.
    source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    negated: bool,
    matcher: Matcher,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    /// An address or CIDR block: `prefix` leading bits of `network` must match.
    V4 {
        network: u32,
        prefix: u32,
    },
    V6 {
        network: u128,
        prefix: u32,
    },
    /// A `*`/`?` pattern matched against the address as `IpAddr` displays it
    /// (lower case, IPv6 compressed). Stored lower-cased.
    Wildcard(String),
}

/// Why a `from=` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

/// Longest pattern or list quoted in an error, in characters: a line of
/// garbage must not make a garbage-sized message in the log or in
/// `dropzone user` output.
const MAX_QUOTED: usize = 64;

/// `text` quoted for an error message, cut to [`MAX_QUOTED`] characters.
fn quoted(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED {
        format!("{text:?}")
    } else {
        let short: String = text.chars().take(MAX_QUOTED).collect();
        format!("{short:?}...")
    }
}

impl AddressPatterns {
    /// Parses a comma-separated pattern list (the already dequoted value of
    /// `from=`).
    pub fn parse(list: &str) -> Result<Self, PatternError> {
        let mut entries = Vec::new();
        for raw in list.split(',') {
            let item = raw.trim();
            let (negated, pattern) = match item.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            if pattern.is_empty() {
                return Err(PatternError(format!(
                    "empty pattern in list {}",
                    quoted(list)
                )));
            }
            entries.push(Entry {
                negated,
                matcher: Matcher::parse(pattern)?,
            });
        }
        Ok(AddressPatterns {
            entries,
            source: list.to_owned(),
        })
    }

    /// Whether `ip` is allowed: no negated entry matches it and at least one
    /// plain entry does (OpenSSH's rule: a negated match always denies).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let text = ip.to_string();
        let mut allowed = false;
        for entry in &self.entries {
            if entry.matcher.matches(ip, &text) {
                if entry.negated {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }
}

impl fmt::Debug for AddressPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from={:?}", self.source)
    }
}

/// An IPv4 client seen through a dual-stack (`[::]`) listener arrives as
/// `::ffff:a.b.c.d`; it is matched as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

impl Matcher {
    fn parse(pattern: &str) -> Result<Self, PatternError> {
        if let Some((addr, bits)) = pattern.split_once('/') {
            return Self::cidr(pattern, addr, bits);
        }
        if let Ok(ip) = pattern.parse::<IpAddr>() {
            return Ok(Self::exact(canonical(ip)));
        }
        // Only characters that can appear in an address's text, plus the
        // wildcards; anything else is a host name we cannot match.
        let address_like = pattern
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'*' | b'?'));
        if !address_like {
            return Err(PatternError(format!(
                "from= pattern {} is not an address, CIDR block or address wildcard \
                 (Dropzone matches client addresses, not host names)",
                quoted(pattern)
            )));
        }
        Ok(Matcher::Wildcard(pattern.to_ascii_lowercase()))
    }

    fn exact(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Matcher::V4 {
                network: u32::from(v4),
                prefix: 32,
            },
            IpAddr::V6(v6) => Matcher::V6 {
                network: u128::from(v6),
                prefix: 128,
            },
        }
    }

    fn cidr(pattern: &str, addr: &str, bits: &str) -> Result<Self, PatternError> {
        let bad = |why: &str| PatternError(format!("from= CIDR block {}: {why}", quoted(pattern)));
        let prefix: u32 = if !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()) {
            bits.parse().map_err(|_| bad("bad prefix length"))?
        } else {
            return Err(bad("bad prefix length"));
        };
        let matcher = match addr.parse::<IpAddr>().map_err(|_| bad("bad address"))? {
            IpAddr::V4(v4) if prefix <= 32 => Matcher::V4 {
                network: u32::from(v4),
                prefix,
            },
            IpAddr::V6(v6) if prefix <= 128 => Matcher::V6 {
                network: u128::from(v6),
                prefix,
            },
            _ => return Err(bad("prefix length too long for the address family")),
        };
        // Like OpenSSH, refuse host bits: `10.0.0.1/8` is almost surely a typo.
        let host_bits_clear = match matcher {
            Matcher::V4 { network, prefix } => network & !mask_v4(prefix) == 0,
            Matcher::V6 { network, prefix } => network & !mask_v6(prefix) == 0,
            Matcher::Wildcard(_) => true,
        };
        if !host_bits_clear {
            return Err(bad("address has bits set beyond the prefix length"));
        }
        Ok(matcher)
    }

    fn matches(&self, ip: IpAddr, text: &str) -> bool {
        match (self, ip) {
            (Matcher::V4 { network, prefix }, IpAddr::V4(v4)) => {
                u32::from(v4) & mask_v4(*prefix) == *network
            }
            (Matcher::V6 { network, prefix }, IpAddr::V6(v6)) => {
                u128::from(v6) & mask_v6(*prefix) == *network
            }
            (Matcher::Wildcard(pattern), _) => wildcard_match(pattern.as_bytes(), text.as_bytes()),
            _ => false,
        }
    }
}

fn mask_v4(prefix: u32) -> u32 {
    u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0)
}

fn mask_v6(prefix: u32) -> u128 {
    u128::MAX.checked_shl(128 - prefix.min(128)).unwrap_or(0)
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character).
/// Iterative with single-star backtracking: linear memory, O(n·m) worst case,
/// so a hostile pattern cannot blow the stack.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &str, ip: &str) -> bool {
        AddressPatterns::parse(list)
            .unwrap()
            .allows(ip.parse().unwrap())
    }

    /// Found by the `authorized_keys` fuzz target: a CIDR block of 600
    /// characters was quoted whole.
    #[test]
    fn long_patterns_are_cut_in_messages() {
        let long = format!("fe80::{}/10", "\u{fffd}".repeat(600));
        for list in [
            long.clone(),
            format!("{}.example", "h".repeat(600)),
            format!("{},,", "1.2.3.4,".repeat(100)),
        ] {
            let e = AddressPatterns::parse(&list).unwrap_err().to_string();
            assert!(e.chars().count() < 200, "{} characters: {e}", e.len());
            assert!(e.contains("..."), "{e}");
        }
    }

    #[test]
    fn exact_and_wildcards() {
        assert!(allows("192.0.2.7", "192.0.2.7"));
        assert!(!allows("192.0.2.7", "192.0.2.70"));
        assert!(allows("192.0.2.*", "192.0.2.70"));
        assert!(!allows("192.0.2.*", "192.0.3.1"));
        assert!(allows("192.0.2.?", "192.0.2.5"));
        assert!(!allows("192.0.2.?", "192.0.2.55"));
        assert!(allows("*", "2001:db8::1"));
        assert!(allows("2001:DB8::*", "2001:db8::1"));
        // An exact IPv6 pattern matches whatever way it is written.
        assert!(allows("0:0:0:0:0:0:0:1", "::1"));
    }

    #[test]
    fn negation_denies_even_when_listed_first_or_last() {
        assert!(!allows("!10.0.0.5,10.0.0.0/8", "10.0.0.5"));
        assert!(!allows("10.0.0.0/8,!10.0.0.5", "10.0.0.5"));
        assert!(allows("10.0.0.0/8,!10.0.0.5", "10.0.0.6"));
        // A list of negations alone allows nothing.
        assert!(!allows("!10.0.0.5", "192.0.2.1"));
    }

    #[test]
    fn cidr_v4_and_v6() {
        assert!(allows("10.0.0.0/8", "10.200.3.4"));
        assert!(!allows("10.0.0.0/8", "11.0.0.1"));
        assert!(allows("0.0.0.0/0", "203.0.113.9"));
        assert!(allows("192.0.2.128/25", "192.0.2.200"));
        assert!(!allows("192.0.2.128/25", "192.0.2.100"));
        assert!(allows("2001:db8::/32", "2001:db8:ffff::1"));
        assert!(!allows("2001:db8::/32", "2001:db9::1"));
        assert!(allows("::/0", "fe80::1"));
        assert!(!allows("10.0.0.0/8", "2001:db8::1"));
        assert!(!allows("2001:db8::/32", "10.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_patterns() {
        assert!(allows("10.0.0.0/8", "::ffff:10.1.2.3"));
        assert!(allows("10.1.2.*", "::ffff:10.1.2.3"));
        assert!(!allows("!10.1.2.3,*", "::ffff:10.1.2.3"));
    }

    #[test]
    fn refuses_what_it_cannot_match() {
        for bad in [
            "",
            "a,,b",
            "!",
            "*.example.com",
            "host",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/x",
            "2001:db8::1/129",
            "fe80::1%eth0",
            "10.0.0.*/8",
        ] {
            assert!(AddressPatterns::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn wildcard_engine() {
        assert!(wildcard_match(b"", b""));
        assert!(wildcard_match(b"*", b""));
        assert!(!wildcard_match(b"?", b""));
        assert!(wildcard_match(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard_match(b"a*b*c", b"aXXbYY"));
        assert!(wildcard_match(b"**a", b"bbba"));
        let long = vec![b'a'; 5000];
        let mut pat = b"*a".repeat(50);
        pat.push(b'b');
        assert!(!wildcard_match(&pat, &long));
    }
}
