//! The container files (Dockerfile, compose.yaml, config/container/) agree
//! with the code and with each other. No container engine is needed: CI
//! validates compose.yaml against the compose specification separately
//! (`.ci/run`), and these tests check what a schema cannot.

use std::path::Path;
use std::process::Command;

use dropzone::config::UsersFileAt;

use super::harness::{BIN, Server, output_with_timeout};

/// A file of the repository, as text.
fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The lines of the Dockerfile's last stage (from its last `FROM`).
fn runtime_stage(dockerfile: &str) -> Vec<&str> {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .expect("the Dockerfile has a FROM");
    lines[last_from..].to_vec()
}

#[test]
fn the_container_server_config_is_valid_and_on_volumes() {
    let text = repo_file("config/container/dropzone.toml");
    let config = dropzone::config::Config::parse(&text)
        .unwrap_or_else(|e| panic!("config/container/dropzone.toml: {e}"));
    assert_eq!(config.listen.port(), 2022);
    assert_eq!(config.kms.backend, dropzone::config::KmsBackend::Eaas);
    let eaas = config.kms.eaas.as_ref().expect("a [kms.eaas] table");
    assert_eq!(eaas.url, "http://eaas:8443");
    assert!(
        !config.auth.pam,
        "PAM is off by default (the service runs as non-root)"
    );

    let compose = repo_file("compose.yaml");
    let dirs = [
        ("host_keys_dir", config.host_keys_dir.clone()),
        ("data_dir", config.data_dir.clone()),
        ("keks_dir", config.keks_dir.clone()),
        (
            "users_file's directory",
            config
                .auth
                .users_file
                .path()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf(),
        ),
    ];
    for (what, dir) in dirs {
        assert!(
            dir.is_absolute(),
            "{what} {} is not absolute",
            dir.display()
        );
        let mount = format!(":{}\n", dir.display());
        assert!(
            compose.contains(&mount),
            "{what} {} is not a volume mount in compose.yaml: its content would be lost",
            dir.display()
        );
    }
    assert!(
        compose.contains("./config/container:/etc/dropzone:ro"),
        "compose.yaml mounts config/container/ at /etc/dropzone"
    );
}

#[test]
fn the_scale_out_example_config_is_valid_and_shares_host_keys_and_users() {
    let text = repo_file("config/scale-out/dropzone.toml");
    let config = dropzone::config::Config::parse(&text)
        .unwrap_or_else(|e| panic!("config/scale-out/dropzone.toml: {e}"));
    let dropzone::config::StorageConfig::S3(s3) = &config.storage else {
        panic!("the scale-out example keeps files in S3")
    };
    let compose = repo_file("config/scale-out/compose.yaml");
    assert_eq!(s3.endpoint.as_deref(), Some("http://seaweedfs:8333"));
    assert!(
        compose.contains("  seaweedfs:\n"),
        "the nodes' object store is a service of the compose file"
    );
    // What every node must share: the users in the bucket, or on a volume
    // the node template mounts; the host keys on such a volume.
    let mut shared = vec![("host_keys_dir", config.host_keys_dir.clone())];
    match &config.auth.users_file {
        UsersFileAt::Object { bucket, .. } => assert_eq!(
            bucket, &s3.bucket,
            "the scale-out example's users object is in its bucket"
        ),
        UsersFileAt::Path(path) => shared.push((
            "users_file's directory",
            path.parent().unwrap().to_path_buf(),
        )),
    }
    for (what, dir) in shared {
        let mount = format!(":{}\n", dir.display());
        assert!(
            compose.contains(&mount),
            "{what} {} is not a shared volume in config/scale-out/compose.yaml",
            dir.display()
        );
    }
    let haproxy = repo_file("config/scale-out/haproxy.cfg");
    for node in ["node1", "node2"] {
        assert!(
            compose.contains(&format!("  {node}:\n")),
            "{node} in compose"
        );
        assert!(
            haproxy.contains(&format!("server {node} {node}:{}", config.listen.port())),
            "haproxy.cfg balances over {node} on the listen port"
        );
    }
}

#[test]
fn the_container_key_service_config_is_valid_and_on_a_volume() {
    let text = repo_file("config/container/eaas.toml");
    let config = dropzone::eaas::config::Config::parse(&text)
        .unwrap_or_else(|e| panic!("config/container/eaas.toml: {e}"));
    assert_eq!(config.listen.port(), 8443);
    assert!(config.keys_dir.is_absolute());
    let compose = repo_file("compose.yaml");
    assert!(
        compose.contains(&format!(":{}\n", config.keys_dir.display())),
        "keys_dir {} is not a volume mount in compose.yaml",
        config.keys_dir.display()
    );
    assert!(compose.contains("\"--config\", \"/etc/dropzone/eaas.toml\""));
}

#[test]
fn the_dockerfile_builds_every_feature_and_ships_no_compiler() {
    let dockerfile = repo_file("Dockerfile");
    // Every cargo feature of Cargo.toml is in the image.
    let manifest: toml::Table = toml::from_str(&repo_file("Cargo.toml")).unwrap();
    let features: Vec<&String> = manifest["features"]
        .as_table()
        .expect("a [features] table")
        .keys()
        .filter(|f| *f != "default")
        .collect();
    let build_line = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build line");
    let built = build_line
        .split_once("--features ")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""))
        .unwrap_or("");
    let built: Vec<&str> = built.split(',').collect();
    for f in &features {
        assert!(
            built.contains(&f.as_str()),
            "feature {f:?} is not built into the image ({build_line:?})"
        );
    }
    assert!(build_line.contains("--locked") && build_line.contains("--release"));

    // The runtime stage: no toolchain, no -dev packages, a non-root user,
    // the SSH health check.
    let stage = runtime_stage(&dockerfile);
    for line in stage.iter().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split_whitespace() {
            let w = word.to_ascii_lowercase();
            let tool = [
                "cargo",
                "rustc",
                "rustup",
                "gcc",
                "clang",
                "build-essential",
            ]
            .iter()
            .any(|t| w.contains(t));
            assert!(
                !tool && !w.ends_with("-dev"),
                "the runtime stage installs or runs {word:?}: {line:?}"
            );
        }
    }
    assert!(
        stage.iter().any(|l| l.trim() == "USER 10001:10001"),
        "the runtime stage runs as uid 10001"
    );
    assert!(
        stage
            .iter()
            .any(|l| l.contains("\"dropzone\", \"healthcheck\""))
    );
    assert!(
        stage
            .iter()
            .any(|l| l.trim()
                == "COPY --from=build /out/dropzone /out/dropzone-eaas /usr/local/bin/")
    );
}

#[test]
fn the_compose_health_check_works_with_the_container_config() {
    // What compose.yaml runs in the dropzone container, with the shipped
    // configuration; only the address is moved to the test server.
    let server = Server::start();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/container/dropzone.toml");
    let mut cmd = Command::new(BIN);
    cmd.current_dir(server.root())
        .args(["healthcheck", "--timeout", "5"])
        .env("DROPZONE_CONFIG", &config)
        .env("DROPZONE_LISTEN", format!("0.0.0.0:{}", server.port));
    let out = output_with_timeout(&mut cmd, None);
    server.check(
        out.status.success(),
        "the compose health check failed against a running server",
        &cmd,
        &out,
    );
}

/// Each binary names itself in `--version` (the image's checks and
/// operators tell the two apart by it).
#[test]
fn each_binary_names_itself_in_its_version() {
    for (bin, name) in [
        (BIN, "dropzone"),
        (super::eaas_service::EAAS_BIN, "dropzone-eaas"),
    ] {
        let mut cmd = Command::new(bin);
        cmd.arg("--version");
        let out = output_with_timeout(&mut cmd, None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} --version failed: {out:?}");
        assert_eq!(
            text.split_whitespace().next(),
            Some(name),
            "{bin} --version printed {text:?}"
        );
    }
}
