//! `[upload]`: scanning uploads before they are stored, and announcing
//! stored uploads to a URL (docs/SCANNING.md).

use std::time::Duration;

use serde::Deserialize;

/// The TOML mirror of `[upload]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpload {
    scan_command: Option<Vec<String>>,
    scan_timeout_secs: Option<u64>,
    max_concurrent_scans: Option<usize>,
    notify_url: Option<String>,
    notify_queue: Option<usize>,
    notify_timeout_secs: Option<u64>,
    notify_retries: Option<u32>,
}

/// `[upload]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// The scanner: program and arguments, run without a shell for every
    /// finished upload, with the plaintext on its stdin. `None`: no scanning.
    pub scan_command: Option<Vec<String>>,
    /// Longest a scan may take; a scanner still running then is killed and
    /// the upload rejected (default 60 s).
    pub scan_timeout: Duration,
    /// Scans running at once; further closes wait for a slot (default 4).
    pub max_concurrent_scans: usize,
    /// Where a JSON event is POSTed after each stored upload (`http` or
    /// `https`). `None`: no notifications.
    pub notify_url: Option<String>,
    /// Events waiting to be sent; more are dropped, counted and logged
    /// (default 1000).
    pub notify_queue: usize,
    /// Time allowed for one POST, connection included (default 5 s).
    pub notify_timeout: Duration,
    /// Further attempts after a failed POST, with doubling pauses from 1 s
    /// (default 3).
    pub notify_retries: u32,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            scan_command: None,
            scan_timeout: Duration::from_secs(60),
            max_concurrent_scans: 4,
            notify_url: None,
            notify_queue: 1000,
            notify_timeout: Duration::from_secs(5),
            notify_retries: 3,
        }
    }
}

/// Most retries: with doubling pauses from 1 s (capped at 60 s), ten already
/// keep one event for about ten minutes.
const MAX_RETRIES: u32 = 10;

impl RawUpload {
    pub(super) fn validate(self) -> Result<UploadConfig, String> {
        let d = UploadConfig::default();
        let scan_command = match self.scan_command {
            None => None,
            Some(cmd) if cmd.is_empty() => {
                return Err(
                    "upload.scan_command must not be empty: give the program and its arguments, \
                     e.g. [\"/usr/local/bin/scan\", \"-\"]"
                        .into(),
                );
            }
            Some(cmd) if cmd[0].trim().is_empty() => {
                return Err("upload.scan_command: the program (first element) is empty".into());
            }
            Some(cmd) if cmd.iter().any(|a| a.contains('\0')) => {
                return Err("upload.scan_command: an argument contains a NUL byte".into());
            }
            Some(cmd) => Some(cmd),
        };
        let secs = |name: &str, v: Option<u64>, default: Duration| match v {
            Some(0) => Err(format!("upload.{name} must be at least 1")),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        let scan_timeout = secs("scan_timeout_secs", self.scan_timeout_secs, d.scan_timeout)?;
        let notify_timeout = secs(
            "notify_timeout_secs",
            self.notify_timeout_secs,
            d.notify_timeout,
        )?;
        let max_concurrent_scans = match self.max_concurrent_scans {
            Some(0) => return Err("upload.max_concurrent_scans must be at least 1".into()),
            Some(n) => n,
            None => d.max_concurrent_scans,
        };
        let notify_queue = match self.notify_queue {
            Some(0) => return Err("upload.notify_queue must be at least 1".into()),
            Some(n) => n,
            None => d.notify_queue,
        };
        let notify_retries = match self.notify_retries {
            Some(n) if n > MAX_RETRIES => {
                return Err(format!(
                    "upload.notify_retries must be at most {MAX_RETRIES}"
                ));
            }
            Some(n) => n,
            None => d.notify_retries,
        };
        let notify_url = match self.notify_url {
            None => None,
            Some(url) => {
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| format!("upload.notify_url = {url:?}: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(format!(
                        "upload.notify_url = {url:?}: expected an http:// or https:// URL with a host"
                    ));
                }
                Some(url)
            }
        };
        Ok(UploadConfig {
            scan_command,
            scan_timeout,
            max_concurrent_scans,
            notify_url,
            notify_queue,
            notify_timeout,
            notify_retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn parse(body: &str) -> Result<UploadConfig, String> {
        Config::parse(&format!("[upload]\n{body}\n")).map(|c| c.upload)
    }

    #[test]
    fn defaults_scan_nothing_and_notify_nobody() {
        let c = Config::parse("").unwrap().upload;
        assert_eq!(c, UploadConfig::default());
        assert_eq!(c.scan_command, None);
        assert_eq!(c.notify_url, None);
        assert_eq!(c.scan_timeout, Duration::from_secs(60));
        assert_eq!(c.max_concurrent_scans, 4);
    }

    #[test]
    fn all_keys() {
        let c = parse(
            "scan_command = [\"/usr/bin/clamdscan\", \"--no-summary\", \"-\"]\n\
             scan_timeout_secs = 30\nmax_concurrent_scans = 2\n\
             notify_url = \"https://hooks.example:8443/dz\"\nnotify_queue = 10\n\
             notify_timeout_secs = 2\nnotify_retries = 0",
        )
        .unwrap();
        assert_eq!(
            c.scan_command.as_deref(),
            Some(
                &[
                    "/usr/bin/clamdscan".to_owned(),
                    "--no-summary".into(),
                    "-".into()
                ][..]
            )
        );
        assert_eq!(c.scan_timeout, Duration::from_secs(30));
        assert_eq!(c.max_concurrent_scans, 2);
        assert_eq!(
            c.notify_url.as_deref(),
            Some("https://hooks.example:8443/dz")
        );
        assert_eq!(c.notify_queue, 10);
        assert_eq!(c.notify_timeout, Duration::from_secs(2));
        assert_eq!(c.notify_retries, 0);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (body, key) in [
            ("scan_command = []", "scan_command"),
            ("scan_command = [\"\"]", "scan_command"),
            ("scan_command = \"/bin/scan\"", "scan_command"),
            ("scan_timeout_secs = 0", "scan_timeout_secs"),
            ("max_concurrent_scans = 0", "max_concurrent_scans"),
            ("notify_url = \"ftp://x/\"", "notify_url"),
            ("notify_url = \"not a url\"", "notify_url"),
            ("notify_queue = 0", "notify_queue"),
            ("notify_timeout_secs = 0", "notify_timeout_secs"),
            ("notify_retries = 11", "notify_retries"),
            ("scan_comand = [\"x\"]", "scan_comand"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(key), "{body}: {e}");
        }
    }
}
