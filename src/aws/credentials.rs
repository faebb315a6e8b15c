//! AWS credentials from the standard chain, in the SDKs' order:
//!
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    optional `AWS_SESSION_TOKEN`;
//! 2. the shared files: profile `AWS_PROFILE` (default `default`) in
//!    `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`), then in
//!    `AWS_CONFIG_FILE` (default `~/.aws/config`, section `[profile NAME]`),
//!    static keys only (`aws_access_key_id`, `aws_secret_access_key`,
//!    `aws_session_token`);
//! 3. web identity: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`
//!    (optional `AWS_ROLE_SESSION_NAME`), exchanged at STS
//!    (`AssumeRoleWithWebIdentity`, endpoint `AWS_ENDPOINT_URL_STS` or
//!    `https://sts.REGION.amazonaws.com`) for temporary credentials that
//!    are fetched again [`REFRESH_BEFORE`] their expiry; the token file is
//!    read anew each time (Kubernetes rotates it).
//!
//! The chain is resolved once, at start-up; static credentials are read
//! then and kept (changing them needs a restart). Not supported: profiles
//! that assume a role (`role_arn`/`source_profile`), SSO, `credential_process`,
//! ECS and EC2 instance metadata.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::blocking::Client;
use zeroize::Zeroizing;

use super::AwsError;
use super::http::{chain, excerpt};
use super::sigv4::uri_encode;
use crate::sync::lock;

/// Temporary credentials are fetched again this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Largest shared credentials/config file or web identity token read.
const MAX_FILE_LEN: u64 = 256 * 1024;

/// One set of AWS credentials. `Debug` shows the key id only.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    expires: Option<SystemTime>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("session_token", &self.session_token.is_some())
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        expires: Option<SystemTime>,
    ) -> Self {
        Credentials {
            access_key_id,
            secret_access_key: Zeroizing::new(secret_access_key),
            session_token: session_token.map(Zeroizing::new),
            expires,
        }
    }

    /// The access key id (not secret; shown in logs).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub(crate) fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref().map(String::as_str)
    }

    /// Whether these must be fetched again before use at `now`.
    fn stale(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| now + REFRESH_BEFORE >= at)
    }
}

/// Where credentials come from, resolved once from the environment.
pub enum Provider {
    /// Credentials fixed at start-up (environment or shared file).
    Static {
        /// The credentials.
        credentials: Credentials,
        /// Where they came from, for the log.
        source: String,
    },
    /// Temporary credentials from STS for a web identity token.
    WebIdentity(WebIdentity),
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `AssumeRoleWithWebIdentity` settings and the credentials last obtained.
pub struct WebIdentity {
    /// The token file (read at every fetch).
    pub token_file: PathBuf,
    /// The role to assume.
    pub role_arn: String,
    /// The session name STS records.
    pub session_name: String,
    /// The STS endpoint (base URL).
    pub sts_url: String,
    cached: Mutex<Option<Credentials>>,
}

impl Provider {
    /// Resolves the chain with `var` as the environment (`std::env::var`
    /// in production) and `region` for the STS endpoint.
    pub fn from_env(
        var: &dyn Fn(&str) -> Option<String>,
        region: &str,
    ) -> Result<Provider, AwsError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(id) = get("AWS_ACCESS_KEY_ID") {
            let secret = get("AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
                AwsError::Misconfigured(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                )
            })?;
            return Ok(Provider::Static {
                credentials: Credentials::new(id, secret, get("AWS_SESSION_TOKEN"), None),
                source: "environment (AWS_ACCESS_KEY_ID)".into(),
            });
        }
        let profile_set = get("AWS_PROFILE");
        let profile = profile_set.clone().unwrap_or_else(|| "default".into());
        let home = get("HOME").map(PathBuf::from);
        let file = |env: &str, default: &str| {
            get(env)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let files = [
            (
                file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
                profile.clone(),
            ),
            (file("AWS_CONFIG_FILE", "config"), config_section(&profile)),
        ];
        for (path, section) in files {
            let Some(path) = path else { continue };
            if let Some(credentials) = from_shared_file(&path, &section)? {
                return Ok(Provider::Static {
                    credentials,
                    source: format!("profile {profile:?} in {}", path.display()),
                });
            }
        }
        if let (Some(token_file), Some(role_arn)) =
            (get("AWS_WEB_IDENTITY_TOKEN_FILE"), get("AWS_ROLE_ARN"))
        {
            let sts_url = get("AWS_ENDPOINT_URL_STS")
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
            return Ok(Provider::WebIdentity(WebIdentity {
                token_file: token_file.into(),
                role_arn,
                session_name: get("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "dropzone".into()),
                sts_url: sts_url.trim_end_matches('/').to_owned(),
                cached: Mutex::new(None),
            }));
        }
        Err(AwsError::Misconfigured(match profile_set {
            Some(p) => format!(
                "AWS_PROFILE={p:?}: no such profile with aws_access_key_id and \
                 aws_secret_access_key in the shared credentials or config file"
            ),
            None => "no AWS credentials found: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials \
                     (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE), or \
                     AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN"
                .into(),
        }))
    }

    /// Where credentials come from, for the log (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Provider::Static { source, .. } => source.clone(),
            Provider::WebIdentity(w) => format!(
                "web identity (role {}, token file {}, STS {})",
                w.role_arn,
                w.token_file.display(),
                w.sts_url
            ),
        }
    }

    /// Credentials to sign a request with now; for web identity, fetched
    /// from STS through `fetch` when none are cached or they expire soon.
    pub(crate) fn get<E: From<AwsError>>(
        &self,
        fetch: &dyn Fn(&WebIdentity, &str) -> Result<Credentials, E>,
    ) -> Result<Credentials, E> {
        match self {
            Provider::Static { credentials, .. } => Ok(credentials.clone()),
            Provider::WebIdentity(w) => {
                // Held across the fetch so that concurrent logins make one
                // STS call, not one each.
                let mut cached = lock(&w.cached);
                if let Some(c) = cached.as_ref().filter(|c| !c.stale(SystemTime::now())) {
                    return Ok(c.clone());
                }
                let token = read_token(&w.token_file)?;
                let fresh = fetch(w, &token)?;
                *cached = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }
}

impl WebIdentity {
    /// STS `AssumeRoleWithWebIdentity` (an unsigned call: the token is the
    /// proof) on `client`: temporary credentials for the role.
    pub(crate) fn assume_role(
        &self,
        client: &Client,
        token: &str,
    ) -> Result<Credentials, AwsError> {
        let form = Zeroizing::new(format!(
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName={}&WebIdentityToken={}",
            uri_encode(&self.role_arn),
            uri_encode(&self.session_name),
            uri_encode(token)
        ));
        let url = format!("{}/", self.sts_url);
        let response = client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.as_bytes().to_vec())
            .send()
            .map_err(|e| AwsError::Unavailable(format!("STS at {url}: {}", chain(&e))))?;
        let status = response.status();
        let mut reply = Zeroizing::new(String::new());
        response
            .take(MAX_FILE_LEN)
            .read_to_string(&mut reply)
            .map_err(|e| AwsError::Unavailable(format!("STS at {url}: {}", chain(&e))))?;
        if !status.is_success() {
            let why = format!(
                "STS AssumeRoleWithWebIdentity for {} (HTTP {}): {}",
                self.role_arn,
                status.as_u16(),
                excerpt(reply.as_bytes())
            );
            return Err(if status.is_server_error() {
                AwsError::Unavailable(why)
            } else {
                AwsError::Refused(why)
            });
        }
        let credentials = parse_sts_reply(&reply)
            .map_err(|e| AwsError::Refused(format!("STS AssumeRoleWithWebIdentity: {e}")))?;
        tracing::info!(role = %self.role_arn, access_key_id = credentials.access_key_id(), "assumed role with web identity");
        Ok(credentials)
    }
}

/// The section name of profile `profile` in the config file.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".into()
    } else {
        format!("profile {profile}")
    }
}

/// The static keys of `[section]` in an INI-style AWS file; `None` if the
/// file or the section (or its keys) is missing.
fn from_shared_file(path: &Path, section: &str) -> Result<Option<Credentials>, AwsError> {
    let text = match read_limited(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AwsError::Misconfigured(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let values = ini_section(&text, section);
    let id = values.get("aws_access_key_id");
    let secret = values.get("aws_secret_access_key");
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Some(Credentials::new(
            id.to_string(),
            secret.to_string(),
            values.get("aws_session_token").map(|t| t.to_string()),
            None,
        ))),
        (Some(_), None) => Err(AwsError::Misconfigured(format!(
            "{} [{section}]: aws_access_key_id without aws_secret_access_key",
            path.display()
        ))),
        _ => Ok(None),
    }
}

/// The `key = value` lines of `[section]` (names lower-cased, values
/// trimmed); comments start with `#` or `;`.
fn ini_section(text: &str, section: &str) -> HashMap<String, Zeroizing<String>> {
    let mut values = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.split_whitespace().collect::<Vec<_>>().join(" ") == section;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            values.insert(
                key.trim().to_ascii_lowercase(),
                Zeroizing::new(value.trim().to_owned()),
            );
        }
    }
    values
}

fn read_limited(path: &Path) -> std::io::Result<Zeroizing<String>> {
    let file = std::fs::File::open(path)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_LEN).read_to_string(&mut text)?;
    Ok(text)
}

fn read_token(path: &Path) -> Result<Zeroizing<String>, AwsError> {
    let text = read_limited(path).map_err(|e| {
        AwsError::Unavailable(format!(
            "cannot read the web identity token file {}: {e}",
            path.display()
        ))
    })?;
    let token = Zeroizing::new(text.trim().to_owned());
    if token.is_empty() {
        return Err(AwsError::Unavailable(format!(
            "the web identity token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// The text of the first `<name>...</name>` element in `xml`, unescaped.
/// (STS and AWS error replies are flat enough for this; no XML parser
/// is in the tree.)
pub(crate) fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml_unescape(xml[start..start + len].trim()))
}

/// The credentials in an `AssumeRoleWithWebIdentity` XML reply.
pub(crate) fn parse_sts_reply(xml: &str) -> Result<Credentials, String> {
    let field = |name: &str| -> Result<String, String> {
        xml_field(xml, name).ok_or_else(|| format!("no {name} in the reply"))
    };
    let expiration = field("Expiration")?;
    let expires = humantime::parse_rfc3339_weak(expiration.trim_end_matches('Z'))
        .map_err(|e| format!("Expiration {expiration:?}: {e}"))?;
    Ok(Credentials::new(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        Some(field("SessionToken")?),
        Some(expires),
    ))
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn static_creds(p: Provider) -> (Credentials, String) {
        match p {
            Provider::Static {
                credentials,
                source,
            } => (credentials, source),
            Provider::WebIdentity(_) => panic!("web identity"),
        }
    }

    #[test]
    fn environment_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = FILE\naws_secret_access_key = s\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        let (c, source) = static_creds(
            Provider::from_env(
                &env(&[
                    ("HOME", home),
                    ("AWS_ACCESS_KEY_ID", "ENV"),
                    ("AWS_SECRET_ACCESS_KEY", "sec"),
                    ("AWS_SESSION_TOKEN", "tok"),
                ]),
                "us-east-1",
            )
            .unwrap(),
        );
        assert_eq!(c.access_key_id(), "ENV");
        assert_eq!(c.secret_access_key(), "sec");
        assert_eq!(c.session_token(), Some("tok"));
        assert!(source.contains("environment"), "{source}");
        let (c, source) =
            static_creds(Provider::from_env(&env(&[("HOME", home)]), "us-east-1").unwrap());
        assert_eq!(c.access_key_id(), "FILE");
        assert_eq!(c.session_token(), None);
        assert!(source.contains("credentials"), "{source}");
        let e = Provider::from_env(
            &env(&[("HOME", home), ("AWS_ACCESS_KEY_ID", "ENV")]),
            "us-east-1",
        )
        .unwrap_err();
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }

    #[test]
    fn profiles_in_credentials_then_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "# comment\n[default]\naws_access_key_id=D\naws_secret_access_key=d\n\
             [work]\n; other comment\nAWS_ACCESS_KEY_ID = W \naws_secret_access_key = w=w\n\
             aws_session_token = t\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile cfg]\naws_access_key_id=C\naws_secret_access_key=c\nregion=x\n",
        )
        .unwrap();
        let vars = |profile: &'static str| {
            env(&[
                ("AWS_PROFILE", profile),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ])
        };
        let (c, _) = static_creds(Provider::from_env(&vars("work"), "r").unwrap());
        assert_eq!(
            (c.access_key_id(), c.secret_access_key(), c.session_token()),
            ("W", "w=w", Some("t"))
        );
        let (c, source) = static_creds(Provider::from_env(&vars("cfg"), "r").unwrap());
        assert_eq!(c.access_key_id(), "C");
        assert!(source.contains("config"), "{source}");
        let e = Provider::from_env(&vars("nope"), "r").unwrap_err();
        assert!(e.to_string().contains("AWS_PROFILE=\"nope\""), "{e}");
    }

    #[test]
    fn nothing_configured_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let e =
            Provider::from_env(&env(&[("HOME", dir.path().to_str().unwrap())]), "r").unwrap_err();
        assert!(matches!(e, AwsError::Misconfigured(_)));
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
    }

    #[test]
    fn web_identity_fetches_once_then_again_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "jwt-1\n").unwrap();
        let p = Provider::from_env(
            &env(&[
                ("HOME", dir.path().to_str().unwrap()),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/dz"),
            ]),
            "eu-west-1",
        )
        .unwrap();
        assert!(p.describe().contains("https://sts.eu-west-1.amazonaws.com"));
        let calls = std::cell::RefCell::new(Vec::new());
        let expires = std::cell::Cell::new(SystemTime::now() + Duration::from_secs(3600));
        let fetch = |w: &WebIdentity, t: &str| {
            calls.borrow_mut().push(t.to_owned());
            assert_eq!(w.role_arn, "arn:aws:iam::123456789012:role/dz");
            Ok::<_, AwsError>(Credentials::new(
                format!("ASIA{}", calls.borrow().len()),
                "s".into(),
                Some("t".into()),
                Some(expires.get()),
            ))
        };
        assert_eq!(p.get(&fetch).unwrap().access_key_id(), "ASIA1");
        assert_eq!(p.get(&fetch).unwrap().access_key_id(), "ASIA1");
        // Credentials that expire within REFRESH_BEFORE are fetched again,
        // with the token file as it is now.
        std::fs::write(&token, "jwt-2").unwrap();
        expires.set(SystemTime::now() + Duration::from_secs(60));
        let mut guard = match &p {
            Provider::WebIdentity(w) => w.cached.lock().unwrap(),
            _ => unreachable!(),
        };
        if let Some(c) = guard.as_mut() {
            c.expires = Some(SystemTime::now() + Duration::from_secs(60));
        }
        drop(guard);
        assert_eq!(p.get(&fetch).unwrap().access_key_id(), "ASIA2");
        assert_eq!(*calls.borrow(), ["jwt-1", "jwt-2"]);
    }

    #[test]
    fn sts_reply() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>\
            <Credentials><SessionToken>a&amp;b</SessionToken><SecretAccessKey>sk</SecretAccessKey>\
            <Expiration>2030-01-02T03:04:05.123Z</Expiration><AccessKeyId>ASIAX</AccessKeyId>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let c = parse_sts_reply(xml).unwrap();
        assert_eq!(c.access_key_id(), "ASIAX");
        assert_eq!(c.secret_access_key(), "sk");
        assert_eq!(c.session_token(), Some("a&b"));
        assert!(c.expires.unwrap() > SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_000_000));
        assert!(parse_sts_reply("<Error><Code>AccessDenied</Code></Error>").is_err());
    }
}
