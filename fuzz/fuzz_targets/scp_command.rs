//! Parses arbitrary bytes as an scp exec command line through
//! `dropzone::scp::command::parse` (what `scp::is_scp_command` and
//! `scp::serve` run on the exec request's command, read as the SSH layer
//! reads it: lossy UTF-8).
//!
//! Checked: no panic; `is_scp_command` agrees with `parse`; an accepted
//! command means what it says: written back with its path single-quoted
//! it parses to the same command, its path goes through the jail without a
//! panic, and anything a shell would run after it (`; id`, `| id`, `$(id)`,
//! ...) makes the line refused.
#![no_main]

use dropzone::scp::command::{self, Direction, ScpCommand};
use dropzone::scp::is_scp_command;
use libfuzzer_sys::fuzz_target;

/// What a shell would run as a second command, or substitute.
const INJECTIONS: [&str; 6] = [" ; id", " | id", " & id", " $(id)", " `id`", " > x"];

/// `cmd` written back as a command line, its path single-quoted as a shell
/// quotes an arbitrary word.
fn requote(cmd: &ScpCommand) -> String {
    let mut line = String::from(match cmd.direction {
        Direction::Sink => "scp -t",
        Direction::Source => "scp -f",
    });
    for (on, flag) in [
        (cmd.recursive, " -r"),
        (cmd.preserve, " -p"),
        (cmd.target_should_be_dir, " -d"),
    ] {
        if on {
            line.push_str(flag);
        }
    }
    line.push_str(" -- '");
    line.push_str(&cmd.path.replace('\'', r"'\''"));
    line.push('\'');
    line
}

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let parsed = command::parse(&line);
    assert_eq!(is_scp_command(&line), parsed.is_some());
    let Some(cmd) = parsed else {
        return;
    };
    let again = requote(&cmd);
    assert_eq!(command::parse(&again).as_ref(), Some(&cmd), "{again:?}");
    let _ = dropzone::jail::resolve(&cmd.path);
    for tail in INJECTIONS {
        let longer = format!("{line}{tail}");
        assert!(command::parse(&longer).is_none(), "accepted {longer:?}");
    }
});
