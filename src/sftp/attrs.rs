//! Store attributes as SFTP attributes and `ls -l` long names.

use russh_sftp::protocol::FileAttributes;

use crate::store::Attributes;
use crate::store::storage::Kind;

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// SFTP attributes with the file type in the permission bits, as clients
/// expect from OpenSSH.
pub fn to_sftp(a: &Attributes) -> FileAttributes {
    let kind_bits = match a.kind {
        Kind::File => S_IFREG,
        Kind::Dir => S_IFDIR,
        Kind::Symlink => S_IFLNK,
        Kind::Other => 0,
    };
    let mut out = FileAttributes::empty();
    out.size = Some(a.size);
    out.uid = Some(a.uid);
    out.gid = Some(a.gid);
    out.permissions = Some(kind_bits | (a.permissions & 0o7777));
    out.atime = Some(clamp_time(a.atime));
    out.mtime = Some(clamp_time(a.mtime));
    out
}

/// SFTP v3 times are unsigned 32-bit seconds.
fn clamp_time(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// An `ls -l` line like OpenSSH's sftp-server produces.
pub fn long_name(name: &str, a: &Attributes, owner: &str, now: i64) -> String {
    let type_char = match a.kind {
        Kind::File => '-',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Other => '?',
    };
    let mut mode = String::with_capacity(10);
    mode.push(type_char);
    let p = a.permissions;
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (p >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        mode.push(match (p & special != 0, exec) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    format!(
        "{mode} {nlink:>4} {owner:<8} {owner:<8} {size:>8} {date} {name}",
        nlink = a.nlink,
        size = a.size,
        date = ls_date(a.mtime, now),
    )
}

/// `Mon dd HH:MM` for times within six months of `now`, else `Mon dd  YYYY`.
fn ls_date(t: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    let month_name = MONTHS[(month - 1) as usize];
    const SIX_MONTHS: i64 = 182 * 86_400;
    if (now - t).abs() < SIX_MONTHS {
        format!(
            "{month_name} {day:>2} {:02}:{:02}",
            secs / 3600,
            secs % 3600 / 60
        )
    } else {
        format!("{month_name} {day:>2}  {year}")
    }
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// well-known days-to-civil algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kind: Kind, permissions: u32) -> Attributes {
        Attributes {
            kind,
            size: 1234,
            permissions,
            uid: 1000,
            gid: 1000,
            nlink: 1,
            atime: 0,
            mtime: 1_764_180_000, // 2025-11-26 18:00 UTC
        }
    }

    #[test]
    fn long_name_looks_like_ls() {
        let l = long_name("f.txt", &attrs(Kind::File, 0o644), "alice", 1_764_180_000);
        assert_eq!(
            l,
            "-rw-r--r--    1 alice    alice        1234 Nov 26 18:00 f.txt"
        );
        let d = long_name("d", &attrs(Kind::Dir, 0o1755), "bob", 1_900_000_000);
        assert!(d.starts_with("drwxr-xr-t"), "{d}");
        assert!(d.contains("Nov 26  2025"), "{d}");
    }

    #[test]
    fn type_bits_are_set() {
        assert_eq!(to_sftp(&attrs(Kind::Dir, 0o755)).permissions, Some(0o40755));
        assert_eq!(
            to_sftp(&attrs(Kind::File, 0o600)).permissions,
            Some(0o100600)
        );
    }
}
