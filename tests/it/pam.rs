//! Linux users through PAM (cargo feature `pam`): real accounts made with
//! `useradd` and `chpasswd`, the shipped PAM service file, and OpenSSH's
//! `sftp` through `sshpass`. These tests need root (CI runs as root): they
//! fail, saying so, rather than skip.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::harness::*;

/// The PAM service the tests use: a copy of config/pam.d/dropzone.
const SERVICE: &str = "dropzone-test";
/// The shipped service file.
const SERVICE_FILE: &str = include_str!("../../config/pam.d/dropzone");

/// A users-file user beside the Linux ones.
const CAROL_PASSWORD: &str = "carol-from-the-users-file";

fn require_root_and_tools() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the PAM tests create Linux users (useradd, chpasswd) and a PAM service file in \
         /etc/pam.d: run them as root (CI does), e.g. `sudo -E cargo test --features pam --test tests pam`"
    );
    for (tool, arg) in [
        ("sshpass", "-V"),
        ("useradd", "--help"),
        ("chpasswd", "--help"),
    ] {
        let found = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is required for the PAM tests");
    }
    install_service();
}

/// Writes /etc/pam.d/dropzone-test once per test run (atomically: tests
/// run in parallel). It stays: it is the shipped file under a test name.
fn install_service() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = Path::new("/etc/pam.d");
        let tmp = dir.join(format!(".{SERVICE}.{}", std::process::id()));
        std::fs::write(&tmp, SERVICE_FILE).expect("writing the test PAM service file");
        std::fs::rename(&tmp, dir.join(SERVICE)).expect("installing the test PAM service file");
    });
}

/// A Linux account made for one test, removed (with its home) when dropped,
/// whether the test passed or not.
struct LinuxUser {
    name: String,
    password: String,
}

impl LinuxUser {
    /// `useradd -m NAME` and `chpasswd`. `tag` makes the name unique per
    /// test; the process id, per run.
    fn create(tag: &str, password: &str) -> LinuxUser {
        let name = format!("dzpam{tag}{}", std::process::id() % 100_000);
        // A leftover of an earlier, killed run.
        let _ = Command::new("userdel").args(["-r", "-f", &name]).output();
        run(Command::new("useradd").args(["-m", "-s", "/bin/sh", &name]));
        let user = LinuxUser {
            name,
            password: password.to_owned(),
        };
        run_with_stdin(
            &mut Command::new("chpasswd"),
            format!("{}:{}\n", user.name, password).as_bytes(),
        );
        user
    }

    fn account(&self) -> nix::unistd::User {
        nix::unistd::User::from_name(&self.name)
            .expect("looking the test user up")
            .expect("the test user exists")
    }

    fn home(&self) -> PathBuf {
        self.account().dir
    }

    /// Authorizes `pubkey` in ~/.ssh/authorized_keys, owned by the user,
    /// with OpenSSH's usual modes.
    fn authorize(&self, pubkey: &Path) {
        let account = self.account();
        let ssh = account.dir.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let file = ssh.join("authorized_keys");
        std::fs::copy(pubkey, &file).unwrap();
        for (path, mode) in [(&account.dir, 0o755), (&ssh, 0o700), (&file, 0o600)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(path, Some(account.uid.as_raw()), Some(account.gid.as_raw()))
                .unwrap();
        }
    }
}

impl Drop for LinuxUser {
    fn drop(&mut self) {
        let out = Command::new("userdel")
            .args(["-r", "-f", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("warning: userdel -r {} failed: {out:?}", self.name);
        }
    }
}

/// A server with Linux users on, and `carol` in the users file (password
/// [`CAROL_PASSWORD`] and a key).
fn start_pam_server(extra_auth: &str) -> Server {
    Server::start_opts(
        &[("carol", Some(CAROL_PASSWORD))],
        &ServerOptions {
            auth_config: Some(format!(
                "pam = true\npam_service = \"{SERVICE}\"\npam_timeout_secs = 10\n{extra_auth}"
            )),
            ..ServerOptions::default()
        },
    )
}

/// How a client logs in.
enum Login<'a> {
    Password(&'a str),
    KeyboardInteractive(&'a str),
    Key(&'a Path),
}

/// `sftp -b BATCH` as `user`, logging in as `login` says and no other way.
fn sftp(srv: &Server, user: &str, login: Login<'_>, batch: &str) -> Command {
    let file = srv.path(format!("batch-{user}-{}", fresh_seed()));
    std::fs::write(&file, batch).unwrap();
    let (mut cmd, opts) = match login {
        Login::Password(pw) => (
            sshpass(pw),
            vec![
                "PreferredAuthentications=password",
                "PubkeyAuthentication=no",
            ],
        ),
        Login::KeyboardInteractive(pw) => (
            sshpass(pw),
            vec![
                "PreferredAuthentications=keyboard-interactive",
                "KbdInteractiveAuthentication=yes",
                "PubkeyAuthentication=no",
            ],
        ),
        Login::Key(key) => {
            let mut cmd = Command::new("sftp");
            cmd.args(["-i"]).arg(key);
            (
                cmd,
                vec![
                    "PreferredAuthentications=publickey",
                    "IdentitiesOnly=yes",
                    "IdentityAgent=none",
                    "BatchMode=yes",
                ],
            )
        }
    };
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(Server::common_opts());
    for opt in opts {
        cmd.args(["-o", opt]);
    }
    cmd.args(["-o", "NumberOfPasswordPrompts=1"])
        .args(["-P", &srv.port.to_string(), "-b"])
        .arg(file)
        .arg(srv.dest(user));
    cmd
}

/// `sshpass -p PW sftp -o BatchMode=no` (it must come before `-b`, which
/// adds BatchMode=yes, and the first value wins).
fn sshpass(password: &str) -> Command {
    let mut cmd = Command::new("sshpass");
    cmd.args(["-p", password, "sftp", "-o", "BatchMode=no"]);
    cmd
}

/// A fresh ed25519 key pair in the client directory.
fn new_key(srv: &Server, name: &str) -> PathBuf {
    let key = srv.local_path(name);
    run(Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-f"])
        .arg(&key));
    key
}

/// Puts a random file as `user`, gets it back, and checks that it round
/// trips and is stored encrypted under data/USER, owned by the server.
fn upload_and_check(srv: &Server, user: &str, login: Login<'_>, name: &str) {
    let plain = random_bytes(200 * 1024 + 17, fresh_seed());
    std::fs::write(srv.local_path(name), &plain).unwrap();
    let back = format!("{name}.back");
    let mut cmd = sftp(
        srv,
        user,
        login,
        &format!("put {name} {name}\nget {name} {back}\n"),
    );
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path(name), &srv.local_path(&back));
    let stored_path = srv.data(user).join(name);
    let stored = std::fs::read(&stored_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", stored_path.display()));
    assert!(stored.len() > plain.len(), "stored file is not larger");
    let starts: Vec<usize> = (0..plain.len()).step_by(997).collect();
    assert_eq!(
        find_plaintext_window(&plain, &starts, &stored),
        None,
        "plaintext found in {}",
        stored_path.display()
    );
    let owner = std::fs::metadata(srv.data(user)).unwrap().uid();
    assert_eq!(
        owner,
        rustix::process::geteuid().as_raw(),
        "data/{user} is not owned by the server's uid"
    );
    assert!(
        srv.path(format!("keks/{user}.key")).is_file(),
        "no key file for {user} after the first login"
    );
}

/// Refused logins leave nothing in data/ or keks/ for `user`.
#[track_caller]
fn assert_nothing_created(srv: &Server, user: &str) {
    assert!(
        !srv.data(user).exists(),
        "a refused login created data/{user}"
    );
    assert!(
        !srv.path(format!("keks/{user}.key")).exists(),
        "a refused login created keks/{user}.key"
    );
}

#[test]
fn linux_user_logs_in_by_password_and_keyboard_interactive() {
    require_root_and_tools();
    let dave = LinuxUser::create("pw", "Dave's system pw 1");
    let srv = start_pam_server("");
    let batch = "ls\n";

    // Refusals first: a wrong password by either method, and a stranger.
    for login in [
        Login::Password("not-daves-password"),
        Login::KeyboardInteractive("not-daves-password"),
        Login::Password(CAROL_PASSWORD),
    ] {
        let mut cmd = sftp(&srv, &dave.name, login, batch);
        srv.run_fail(&mut cmd);
    }
    assert_nothing_created(&srv, &dave.name);
    let mut cmd = sftp(&srv, "dzpamnobody", Login::Password("x"), batch);
    srv.run_fail(&mut cmd);
    assert_nothing_created(&srv, "dzpamnobody");

    upload_and_check(&srv, &dave.name, Login::Password(&dave.password), "a.bin");
    upload_and_check(
        &srv,
        &dave.name,
        Login::KeyboardInteractive(&dave.password),
        "b.bin",
    );
    let log = srv.log();
    assert!(
        log.contains("method=\"keyboard-interactive\"") || log.contains("keyboard-interactive"),
        "no keyboard-interactive login in the log:\n{log}"
    );

    // The users file keeps working beside PAM, by password and by key.
    upload_and_check(&srv, "carol", Login::Password(CAROL_PASSWORD), "c.bin");
    let mut cmd = srv.sftp("carol", "ls\n");
    srv.run(&mut cmd);
    let mut cmd = sftp(&srv, "carol", Login::Password("wrong"), batch);
    srv.run_fail(&mut cmd);
}

#[test]
fn locked_and_expired_accounts_are_refused() {
    require_root_and_tools();
    let erin = LinuxUser::create("lk", "Erin's system pw 2");
    let srv = start_pam_server("");
    let key = new_key(&srv, "erin");
    erin.authorize(&key.with_extension("pub"));

    run(Command::new("usermod").args(["-L", &erin.name]));
    let mut cmd = sftp(&srv, &erin.name, Login::Password(&erin.password), "ls\n");
    srv.run_fail(&mut cmd);
    assert_nothing_created(&srv, &erin.name);
    run(Command::new("usermod").args(["-U", &erin.name]));
    // Unlocked, the same login works: the lock was the reason.
    let mut cmd = sftp(&srv, &erin.name, Login::Password(&erin.password), "ls\n");
    srv.run(&mut cmd);

    run(Command::new("chage").args(["-E", "0", &erin.name]));
    for login in [
        Login::Password(&erin.password),
        Login::KeyboardInteractive(&erin.password),
        Login::Key(&key),
    ] {
        let mut cmd = sftp(&srv, &erin.name, login, "ls\n");
        srv.run_fail(&mut cmd);
    }
    let log = srv.log();
    assert!(
        log.contains("account refused"),
        "the expired account was not refused by PAM account management:\n{log}"
    );
    run(Command::new("chage").args(["-E", "-1", &erin.name]));
    let mut cmd = sftp(&srv, &erin.name, Login::Key(&key), "ls\n");
    srv.run(&mut cmd);
}

#[test]
fn root_is_refused_by_default() {
    require_root_and_tools();
    let srv = start_pam_server("");
    for login in [
        Login::Password("any-password"),
        Login::KeyboardInteractive("any-password"),
    ] {
        let mut cmd = sftp(&srv, "root", login, "ls\n");
        srv.run_fail(&mut cmd);
    }
    assert_nothing_created(&srv, "root");
    let log = srv.log();
    assert!(
        log.contains("root login refused (auth.pam_allow_root = false)"),
        "root was not refused by policy:\n{log}"
    );
}

#[test]
fn authorized_keys_login_and_strict_modes() {
    require_root_and_tools();
    let frank = LinuxUser::create("key", "Frank's system pw 3");
    let srv = start_pam_server("");
    let key = new_key(&srv, "frank");
    let other = new_key(&srv, "other");
    frank.authorize(&key.with_extension("pub"));

    upload_and_check(&srv, &frank.name, Login::Key(&key), "k.bin");
    let mut cmd = sftp(&srv, &frank.name, Login::Key(&other), "ls\n");
    srv.run_fail(&mut cmd);

    // A group-writable home: anyone in the group could replace .ssh.
    let home = frank.home();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o775)).unwrap();
    let mut cmd = sftp(&srv, &frank.name, Login::Key(&key), "ls\n");
    srv.run_fail(&mut cmd);
    let log = srv.log();
    assert!(
        log.contains("bad permissions") && log.contains("writable by group or others"),
        "the refusal does not say why:\n{log}"
    );

    // A key file owned by another user (here, carol's would-be uid 4242).
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = home.join(".ssh/authorized_keys");
    std::os::unix::fs::chown(&file, Some(4242), None).unwrap();
    let mut cmd = sftp(&srv, &frank.name, Login::Key(&key), "ls\n");
    srv.run_fail(&mut cmd);
    assert!(
        srv.log().contains("bad ownership"),
        "no ownership refusal in the log:\n{}",
        srv.log_tail(20)
    );

    // Put right again, it works again.
    std::os::unix::fs::chown(&file, Some(frank.account().uid.as_raw()), None).unwrap();
    let mut cmd = sftp(&srv, &frank.name, Login::Key(&key), "get k.bin k2.bin\n");
    srv.run(&mut cmd);
}

#[test]
fn keyboard_interactive_is_offered_only_with_pam() {
    require_root_and_tools();
    let gina = LinuxUser::create("ki", "Gina's system pw 4");
    // Without PAM: not offered (and Linux users are not users).
    let plain = Server::start_with(&[("carol", Some(CAROL_PASSWORD))]);
    let mut cmd = sftp(
        &plain,
        &gina.name,
        Login::KeyboardInteractive(&gina.password),
        "ls\n",
    );
    let out = plain.run_fail(&mut cmd);
    plain.check(
        offered_methods(&out) == ["password", "publickey"],
        "the server without PAM offers other methods than publickey and password",
        &cmd,
        &out,
    );
    let mut cmd = sftp(&plain, &gina.name, Login::Password(&gina.password), "ls\n");
    plain.run_fail(&mut cmd);

    let srv = start_pam_server("");
    let mut cmd = sftp(&srv, &gina.name, Login::Password("wrong"), "ls\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        offered_methods(&out) == ["keyboard-interactive", "password", "publickey"],
        "the server with PAM does not offer keyboard-interactive",
        &cmd,
        &out,
    );
}

/// The methods of OpenSSH's `Permission denied (a,b,c).`, sorted.
fn offered_methods(out: &std::process::Output) -> Vec<String> {
    let text = stderr(out);
    let Some(start) = text.find("Permission denied (") else {
        return Vec::new();
    };
    let rest = &text[start + "Permission denied (".len()..];
    let mut methods: Vec<String> = rest[..rest.find(')').unwrap_or(0)]
        .split(',')
        .map(str::to_owned)
        .collect();
    methods.sort();
    methods
}
