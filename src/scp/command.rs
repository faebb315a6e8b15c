//! The scp command line: what the SSH layer's exec request carries, split
//! into words as a POSIX shell would and read as OpenSSH's `scp` reads its
//! options. No shell ever runs it; anything a shell would treat specially
//! makes the command unacceptable (the `scp_command` fuzz target checks
//! that an accepted command means what it says).

/// Which way the files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `-t`: the client uploads, the server writes.
    Sink,
    /// `-f`: the server reads and sends.
    Source,
}

/// A parsed scp command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    /// Which way the files go.
    pub direction: Direction,
    /// `-r`: directories are copied recursively.
    pub recursive: bool,
    /// `-p`: times and modes are preserved.
    pub preserve: bool,
    /// `-d`: the target must be a directory.
    pub target_should_be_dir: bool,
    /// The one path operand, as the client wrote it (after shell unquoting).
    pub path: String,
}

/// Parses an exec command line: `scp` followed by options among
/// `-t -f -r -p -d -v -q` (exactly one of `-t` and `-f`), an optional `--`,
/// and exactly one path; `None` for anything else.
pub fn parse(command: &str) -> Option<ScpCommand> {
    let mut words = shell_words(command)?.into_iter();
    if words.next()? != "scp" {
        return None;
    }
    let (mut sink, mut source, mut recursive, mut preserve, mut dir) =
        (false, false, false, false, false);
    let mut operands = Vec::new();
    let mut options_done = false;
    for word in words {
        if !options_done {
            if word == "--" {
                options_done = true;
                continue;
            }
            if let Some(flags) = word.strip_prefix('-')
                && !flags.is_empty()
            {
                for flag in flags.chars() {
                    match flag {
                        't' => sink = true,
                        'f' => source = true,
                        'r' => recursive = true,
                        'p' => preserve = true,
                        'd' => dir = true,
                        'v' | 'q' => {}
                        _ => return None,
                    }
                }
                continue;
            }
            // Like getopt: the first operand ends the options.
            options_done = true;
        }
        operands.push(word);
    }
    let direction = match (sink, source) {
        (true, false) => Direction::Sink,
        (false, true) => Direction::Source,
        _ => return None,
    };
    let [path] = <[String; 1]>::try_from(operands).ok()?;
    Some(ScpCommand {
        direction,
        recursive,
        preserve,
        target_should_be_dir: dir,
        path,
    })
}

/// Splits a command line into words as a POSIX shell would for simple
/// commands: blanks separate words, single quotes, double quotes and
/// backslashes quote, a leading `~` (alone or before `/`) is the home
/// directory, which is the user's root. Returns `None` for anything that
/// would make a shell do more than run one command with literal words
/// (`;`, `&`, `|`, redirections, `$`, backquotes, braces, comments, `~user`,
/// an unterminated quote, a control character).
fn shell_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('$' | '`' | '"' | '\\') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        '$' | '`' => return None,
                        c => word.push(c),
                    }
                }
            }
            '\\' => match chars.next()? {
                '\n' => {}
                c => {
                    in_word = true;
                    word.push(c);
                }
            },
            '~' if !in_word => match chars.peek() {
                None | Some(' ' | '\t' | '/') => {
                    in_word = true;
                    word.push('/');
                }
                Some(_) => return None,
            },
            '#' if !in_word => return None,
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' | '{' | '}' => return None,
            c if c.is_control() => return None,
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail;
    use crate::scp::is_scp_command;
    use crate::scp::testing::p;
    use crate::store::storage::ObjectPath;

    fn parsed(command: &str) -> ScpCommand {
        parse(command).unwrap_or_else(|| panic!("refused: {command:?}"))
    }

    #[test]
    fn command_parsing() {
        let c = parsed("scp -t -- /path");
        assert_eq!(c.direction, Direction::Sink);
        assert_eq!(c.path, "/path");
        assert!(!c.recursive && !c.preserve && !c.target_should_be_dir);

        let c = parsed("scp -r -t dir");
        assert!(c.recursive);
        assert_eq!(c.path, "dir");

        let c = parsed("scp -p -f 'file name'");
        assert_eq!(c.direction, Direction::Source);
        assert!(c.preserve);
        assert_eq!(c.path, "file name");

        let c = parsed("scp -v -d -t -- target");
        assert!(c.target_should_be_dir);
        assert_eq!(c.path, "target");

        let c = parsed("scp -rpt -- -dash");
        assert!(c.recursive && c.preserve);
        assert_eq!(c.path, "-dash");

        assert_eq!(parsed(r#"scp -f "a \"b\" \$c \x""#).path, r#"a "b" $c \x"#);
        assert_eq!(parsed(r"scp -f a\ b\'c").path, "a b'c");
        assert_eq!(parsed(r"scp -f 'it'\''s'").path, "it's");
        assert_eq!(parsed("scp  -q\t-f   x  ").path, "x");
        assert_eq!(parsed("scp -t ''").path, "");
        assert_eq!(parsed("scp -t 'a;b|c$d'").path, "a;b|c$d");
        assert_eq!(jail::resolve(&parsed("scp -t ~/x").path).unwrap(), p("/x"));
        assert_eq!(
            jail::resolve(&parsed("scp -t ~").path).unwrap(),
            ObjectPath::root()
        );
        assert_eq!(parsed("scp -t a~b").path, "a~b");
    }

    #[test]
    fn commands_that_are_refused() {
        for bad in [
            "scp -t; rm -rf /",
            "scp -t x; rm -rf /",
            "scp -S evil -t x",
            "scp -3 -t x",
            "scp -t",
            "scp -t a b",
            "scp -t x -r",
            "scp -t -f x",
            "scp x",
            "scp",
            "",
            "rm -t x",
            "/usr/bin/scp -t x",
            "scp -t $(id)",
            "scp -t \"$(id)\"",
            "scp -t `id`",
            "scp -t x | cat",
            "scp -t x && id",
            "scp -t x > y",
            "scp -t 'unterminated",
            "scp -t \"unterminated",
            "scp -t x\\",
            "scp -t x\nid",
            "scp -t ~root/x",
            "scp -t {a,b}",
            "scp -t x #comment",
            "scp -t $HOME",
        ] {
            assert!(!is_scp_command(bad), "accepted: {bad:?}");
        }
        assert!(is_scp_command("scp -t -- /path"));
    }
}
