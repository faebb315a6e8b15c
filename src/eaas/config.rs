//! The service's configuration file (`config/eaas.toml`): a serde mirror of
//! the TOML, then a validated [`Config`].
//!
//! Relative paths are taken relative to the working directory the service
//! is started from. Errors name the key and its line.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::keystore::KeyBits;

/// Where `dropzone-eaas` looks for its configuration by default.
pub const DEFAULT_PATH: &str = "config/eaas.toml";

/// A configuration that could not be used. The message names the file and
/// the key and line at fault.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file at fault.
    pub path: String,
    /// What is wrong, with line and key.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    keys_dir: Option<PathBuf>,
    token_file: Option<Spanned<PathBuf>>,
    key_bits: Option<Spanned<i64>>,
    passphrase_file: Option<Spanned<PathBuf>>,
    tls: Option<RawTls>,
    // Parsed in every build, so that a build without the `pkcs11` feature
    // can say so instead of calling the table unknown.
    pkcs11: Option<Spanned<RawPkcs11>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: Spanned<PathBuf>,
    token_label: Spanned<String>,
    pin_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Spanned<PathBuf>,
    key_file: Spanned<PathBuf>,
}

/// A file named in the configuration, with where it was named, so that a
/// failure to read it can point at the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The key, like `token_file` or `tls.cert_file`.
    pub key: &'static str,
    /// The path as configured.
    pub path: PathBuf,
    /// The line of the configuration file that names it.
    pub line: usize,
}

impl fmt::Display for FileSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {} = {:?}",
            self.line,
            self.key,
            self.path.display()
        )
    }
}

/// `[tls]`: serve HTTPS with this certificate chain and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_file: FileSetting,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1 PEM, unencrypted).
    pub key_file: FileSetting,
}

/// `[pkcs11]`: keep the RSA keys in a PKCS#11 token instead of `keys_dir`
/// (cargo feature `pkcs11`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library) to load, like
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: FileSetting,
    /// The label of the token that holds the keys (1 to 32 bytes, as
    /// `softhsm2-util --init-token --label` sets it).
    pub token_label: String,
    /// The file holding the token's user PIN; the environment variable
    /// `DROPZONE_EAAS_PKCS11_PIN` takes precedence.
    pub pin_file: Option<FileSetting>,
    /// The line of the `[pkcs11]` table.
    pub line: usize,
}

/// Longest token label: `CK_TOKEN_INFO.label` is 32 bytes, blank padded.
pub const MAX_TOKEN_LABEL_LEN: usize = 32;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (default `0.0.0.0:8443`).
    pub listen: SocketAddr,
    /// Where keys are stored (default `eaas_keys`).
    pub keys_dir: PathBuf,
    /// If set, every request but `GET /` needs `Authorization: Bearer`
    /// with the token in this file.
    pub token_file: Option<FileSetting>,
    /// Size of newly generated keys.
    pub key_bits: KeyBits,
    /// The at-rest passphrase's file; without it (and without the
    /// environment variable) `keys_dir/.passphrase` is used, generated on
    /// first start.
    pub passphrase_file: Option<FileSetting>,
    /// HTTPS instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// Keys in a PKCS#11 token instead of `keys_dir` (then `keys_dir` and
    /// the passphrase are not used). Always `None` in a build without the
    /// `pkcs11` feature, which refuses the table.
    pub pkcs11: Option<Pkcs11Settings>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Config::parse(&text).map_err(err)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        let file = |key: &'static str, s: Spanned<PathBuf>| FileSetting {
            key,
            line: line(s.span()),
            path: s.into_inner(),
        };
        let key_bits = match raw.key_bits {
            None => KeyBits::DEFAULT,
            Some(bits) => usize::try_from(*bits.get_ref())
                .ok()
                .and_then(KeyBits::new)
                .ok_or_else(|| {
                    format!(
                        "line {}: key_bits = {}: expected 2048, 3072 or 4096",
                        line(bits.span()),
                        bits.get_ref()
                    )
                })?,
        };
        let pkcs11 = match raw.pkcs11 {
            None => None,
            Some(table) => {
                let table_line = line(table.span());
                if !cfg!(feature = "pkcs11") {
                    return Err(format!(
                        "line {table_line}: [pkcs11]: this dropzone-eaas was built without the \
                         `pkcs11` cargo feature, so it cannot keep keys in a PKCS#11 token; \
                         build it with `cargo build --features pkcs11`, or remove [pkcs11] to \
                         keep the keys in keys_dir"
                    ));
                }
                let t = table.into_inner();
                let label_line = line(t.token_label.span());
                let token_label = t.token_label.into_inner();
                if token_label.trim().is_empty() || token_label.len() > MAX_TOKEN_LABEL_LEN {
                    return Err(format!(
                        "line {label_line}: pkcs11.token_label = {token_label:?}: expected 1 to \
                         {MAX_TOKEN_LABEL_LEN} bytes, not all blank"
                    ));
                }
                Some(Pkcs11Settings {
                    module: file("pkcs11.module", t.module),
                    token_label: token_label.trim_end().to_owned(),
                    pin_file: t.pin_file.map(|s| file("pkcs11.pin_file", s)),
                    line: table_line,
                })
            }
        };
        Ok(Config {
            listen: raw
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443))),
            keys_dir: raw.keys_dir.unwrap_or_else(|| "eaas_keys".into()),
            token_file: raw.token_file.map(|s| file("token_file", s)),
            key_bits,
            passphrase_file: raw.passphrase_file.map(|s| file("passphrase_file", s)),
            tls: raw.tls.map(|t| TlsFiles {
                cert_file: file("tls.cert_file", t.cert_file),
                key_file: file("tls.key_file", t.key_file),
            }),
            pkcs11,
        })
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses() {
        let c = Config::parse(include_str!("../../config/eaas.toml")).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.keys_dir, PathBuf::from("eaas_keys"));
        assert_eq!(c.key_bits, KeyBits::DEFAULT);
        assert!(c.token_file.is_none() && c.passphrase_file.is_none() && c.tls.is_none());
        assert!(c.pkcs11.is_none());
    }

    const PKCS11_TABLE: &str = "listen = \"127.0.0.1:0\"\n\n[pkcs11]\n\
        module = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"dropzone\"\n\
        pin_file = \"pin\"\n";

    #[cfg(feature = "pkcs11")]
    #[test]
    fn pkcs11_table() {
        let c = Config::parse(PKCS11_TABLE).unwrap();
        let p = c.pkcs11.unwrap();
        assert_eq!(p.line, 3);
        assert_eq!(
            p.module.path,
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!((p.module.key, p.module.line), ("pkcs11.module", 4));
        assert_eq!(p.token_label, "dropzone");
        assert_eq!(
            p.pin_file.unwrap().to_string(),
            "line 6: pkcs11.pin_file = \"pin\""
        );
        // The PIN file is optional (the environment variable may hold it);
        // the module and the label are not.
        let c = Config::parse("[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\n").unwrap();
        assert!(c.pkcs11.unwrap().pin_file.is_none());
        let e = Config::parse("[pkcs11]\nmodule = \"m.so\"\n").unwrap_err();
        assert!(e.contains("token_label"), "{e}");
        let e = Config::parse("[pkcs11]\nmodule = \"m.so\"\ntoken_label = \"\"\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("token_label"), "{e}");
        let long = "x".repeat(33);
        let e = Config::parse(&format!(
            "[pkcs11]\nmodule = \"m\"\ntoken_label = \"{long}\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("line 3") && e.contains("1 to 32 bytes"), "{e}");
        let e =
            Config::parse("[pkcs11]\nmodule = \"m\"\ntoken_label = \"t\"\nslot = 1\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("slot"), "{e}");
    }

    #[cfg(not(feature = "pkcs11"))]
    #[test]
    fn pkcs11_table_without_the_feature_is_refused() {
        let e = Config::parse(PKCS11_TABLE).unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("without the `pkcs11` cargo feature"),
            "{e}"
        );
    }

    #[test]
    fn every_key() {
        let c = Config::parse(
            "listen = \"127.0.0.1:0\"\nkeys_dir = \"k\"\ntoken_file = \"t\"\nkey_bits = 4096\n\
             passphrase_file = \"p\"\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.key_bits.get(), 4096);
        let token = c.token_file.unwrap();
        assert_eq!((token.key, token.line), ("token_file", 3));
        assert_eq!(token.to_string(), "line 3: token_file = \"t\"");
        assert_eq!(c.passphrase_file.unwrap().line, 5);
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file.line, 7);
        assert_eq!(tls.key_file.path, PathBuf::from("k.pem"));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = Config::parse("listen = \"0.0.0.0:1\"\n\nkey_bits = 1000\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("key_bits"), "{e}");
        let e = Config::parse("keys_dir = \"k\"\ntoken_fil = \"x\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("token_fil"), "{e}");
        let e = Config::parse("listen = \"nope\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("listen"), "{e}");
        let e = Config::parse("[tls]\ncert_file = \"c\"\n").unwrap_err();
        assert!(e.contains("key_file"), "{e}");
        let e = Config::parse("key_bits = \"2048\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("key_bits"), "{e}");
    }
}
