//! A non-OpenSSH client: paramiko (Python).

use std::process::Command;

use super::harness::*;

const SCRIPT: &str = r#"
import sys
import paramiko

port, key, local, back = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", port=port, username="alice", key_filename=key,
               look_for_keys=False, allow_agent=False, timeout=20)
sftp = client.open_sftp()
sftp.mkdir("pdir")
sftp.put(local, "pdir/pm.bin")
st = sftp.stat("pdir/pm.bin")
print("size", st.st_size)
print("list", ",".join(sorted(sftp.listdir("pdir"))))
print("root", ",".join(sorted(sftp.listdir("/"))))
sftp.get("pdir/pm.bin", back)
with sftp.open("pdir/pm.bin", "rb") as f:
    f.seek(70000)
    print("pread", f.read(16).hex())
try:
    sftp.stat("pdir/missing")
    print("missing-stat", "ok")
except IOError as e:
    print("missing-stat", type(e).__name__, getattr(e, "errno", None))
sftp.close()
client.close()
print("done")
"#;

#[test]
fn paramiko_put_stat_list_get() {
    let have = Command::new("python3")
        .args(["-c", "import paramiko"])
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(have, Ok(true)),
        "python3 with paramiko is required for this test: install it (pip install paramiko)"
    );
    let srv = Server::start();
    let data = random_bytes(150_000, fresh_seed());
    let local = srv.local_path("pm.bin");
    let back = srv.local_path("pm-back.bin");
    std::fs::write(&local, &data).unwrap();
    let mut cmd = Command::new("python3");
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(["-c", SCRIPT, &srv.port.to_string()])
        .arg(&srv.user("alice").key)
        .arg(&local)
        .arg(&back);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    let expect = [
        "size 150000".to_owned(),
        "list pm.bin".to_owned(),
        "root pdir".to_owned(),
        format!("pread {}", hex(&data[70000..70016])),
        "missing-stat FileNotFoundError 2".to_owned(),
        "done".to_owned(),
    ];
    for line in &expect {
        srv.check(
            text.lines().any(|l| l == line),
            &format!("paramiko output lacks {line:?}"),
            &cmd,
            &out,
        );
    }
    assert_same_file(&local, &back);
    assert!(
        srv.data("alice").join("pdir/pm.bin").is_file(),
        "data/alice/pdir/pm.bin missing"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
