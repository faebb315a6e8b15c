//! The wire API: routing, the bearer token, and the one place that turns
//! outcomes into HTTP statuses and bodies, as the original EaaS did.
//!
//! | outcome | reply |
//! |---|---|
//! | success | 200, JSON |
//! | `GET /` | 200 `{"service": "dropzone-eaas", "status": "ok", ...}`, no token needed |
//! | unsupported key type (`/gen/key/aes`, ...) | 200 `{"Error": "..."}` |
//! | any failure of a request (unknown key, bad JSON, missing field, bad hex, tampered ciphertext, ...) | 500, `text/plain` |
//! | token required and missing or wrong | 401, `text/plain` |
//! | wrong method | 405; unknown path 404 (both `text/plain`) |
//!
//! [`Service::handle`] works on plain values, not on an HTTP library's
//! types, so it is tested without sockets; [`super::server`] carries it over
//! HTTP. Every request is logged with method, path, key and status; bodies
//! (plaintexts, ciphertexts) are never logged, and 500 bodies carry no host
//! paths (the log has the detail).

use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;
use zeroize::Zeroizing;

use super::keystore::{Generated, KeyStore, KeyStoreError};
use super::request::{self, BadRequest};
use super::secret::KeyId;
use super::token::Token;

/// Name reported by `GET /`.
pub const SERVICE_NAME: &str = "dropzone-eaas";
/// The only key type the service has.
const KEY_TYPE: &str = "rsa";
/// `Content-Type` of successful replies.
pub const JSON: &str = "application/json";
/// `Content-Type` of error replies.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// An HTTP request, as far as the service cares.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// The whole body.
    pub body: &'a [u8],
    /// The client, for the log.
    pub peer: Option<SocketAddr>,
}

/// An HTTP reply. The body is zeroized when dropped (a decrypt reply holds
/// a plaintext).
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, &'static str)>,
    /// The body.
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Response {
    fn json<T: Serialize>(value: &T, size_hint: usize) -> Response {
        // Sized up front so that serialising never reallocates and leaves an
        // unzeroized copy behind.
        let mut body = Zeroizing::new(Vec::with_capacity(size_hint));
        let ok = serde_json::to_writer(&mut *body, value).is_ok();
        if !ok {
            // Serialising plain structs of strings cannot fail; if it did,
            // the client must see a failure, not an empty success.
            return Response::text(500, "internal error: cannot encode the reply");
        }
        Response {
            status: 200,
            content_type: JSON,
            headers: Vec::new(),
            body,
        }
    }

    /// A `text/plain` reply.
    pub fn text(status: u16, message: &str) -> Response {
        let mut body = Vec::with_capacity(message.len() + 1);
        body.extend_from_slice(message.as_bytes());
        body.push(b'\n');
        Response {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: Zeroizing::new(body),
        }
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Response {
        self.headers.push((name, value));
        self
    }
}

#[derive(Serialize)]
struct Health {
    service: &'static str,
    status: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[allow(non_snake_case)] // the original's field name
struct Info {
    Info: String,
}

#[derive(Serialize)]
#[allow(non_snake_case)] // the original's field name
struct Error {
    Error: String,
}

#[derive(Serialize)]
struct Ciphertext<'a> {
    ciphertext: &'a str,
}

#[derive(Serialize)]
struct Plaintext<'a> {
    plaintext: &'a str,
}

/// The operations of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Generate,
    Encrypt,
    Decrypt,
}

/// Where a path leads.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Key(Operation),
    /// A known operation for a key type other than RSA.
    UnsupportedType(&'a str),
    NotFound,
}

fn route(path: &str) -> Route<'_> {
    if path == "/" {
        return Route::Health;
    }
    let (op, kind) = if let Some(kind) = path.strip_prefix("/gen/key/") {
        (Operation::Generate, kind)
    } else if let Some(kind) = path.strip_prefix("/key/encrypt/") {
        (Operation::Encrypt, kind)
    } else if let Some(kind) = path.strip_prefix("/key/decrypt/") {
        (Operation::Decrypt, kind)
    } else {
        return Route::NotFound;
    };
    if kind == KEY_TYPE {
        Route::Key(op)
    } else if !kind.is_empty() && !kind.contains('/') {
        Route::UnsupportedType(kind)
    } else {
        Route::NotFound
    }
}

/// Why a request failed: all of these are HTTP 500 with a text body.
enum Failure {
    BadRequest(BadRequest),
    Key(KeyId, KeyStoreError),
    NotText(KeyId),
}

impl Failure {
    /// The message for the client: what is wrong, no host paths.
    fn public(&self) -> String {
        match self {
            Failure::BadRequest(e) => e.to_string(),
            Failure::Key(id, e) => match e {
                KeyStoreError::UnknownKey(_)
                | KeyStoreError::PlaintextTooLong { .. }
                | KeyStoreError::DecryptionFailed(_) => e.to_string(),
                KeyStoreError::BadKeyFile { .. } | KeyStoreError::BadTokenKey(_) => {
                    format!("key {id} cannot be loaded (see the service log)")
                }
                KeyStoreError::Storage(_) => {
                    format!("key storage failed for {id} (see the service log)")
                }
                KeyStoreError::Crypto(_) => {
                    format!("RSA operation failed for {id} (see the service log)")
                }
            },
            Failure::NotText(id) => {
                format!("the plaintext decrypted under {id} is not UTF-8 text")
            }
        }
    }

    /// The message for the log: the public one, or the detail behind it.
    fn detail(&self) -> String {
        match self {
            Failure::Key(_, e) => e.to_string(),
            other => other.public(),
        }
    }
}

/// The key service: a key store behind the wire API.
#[derive(Debug)]
pub struct Service {
    store: Box<dyn KeyStore>,
    token: Option<Token>,
}

impl Service {
    /// The API over `store` (key files or a PKCS#11 token: the replies are
    /// the same); with a `token`, every request but `GET /` must carry it.
    pub fn new(store: Box<dyn KeyStore>, token: Option<Token>) -> Service {
        Service { store, token }
    }

    /// The key store.
    pub fn store(&self) -> &dyn KeyStore {
        &*self.store
    }

    /// Answers one request (blocking: key generation and RSA take time) and
    /// logs it.
    pub fn handle(&self, req: &Request<'_>) -> Response {
        let started = Instant::now();
        let (response, key, failure) = self.dispatch(req);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let key = key.as_ref().map(|k| k.to_string());
        let key = key.as_deref().unwrap_or("-");
        let peer = req
            .peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        match (response.status, failure) {
            (500, Some(f)) => tracing::warn!(
                %peer, method = req.method, path = req.path, key, status = response.status,
                elapsed_ms, error = %f.detail(), "request failed"
            ),
            (401, _) => tracing::warn!(
                %peer, method = req.method, path = req.path, status = response.status,
                "request without a valid bearer token"
            ),
            _ => tracing::info!(
                %peer, method = req.method, path = req.path, key, status = response.status,
                elapsed_ms, "request"
            ),
        }
        response
    }

    fn dispatch(&self, req: &Request<'_>) -> (Response, Option<KeyId>, Option<Failure>) {
        let route = route(req.path);
        if route == Route::Health && matches!(req.method, "GET" | "HEAD") {
            let health = Health {
                service: SERVICE_NAME,
                status: "ok",
                version: env!("CARGO_PKG_VERSION"),
            };
            return (Response::json(&health, 128), None, None);
        }
        if let Some(token) = &self.token
            && !token.authorizes(req.authorization)
        {
            let r = Response::text(401, "unauthorized: send Authorization: Bearer <token>")
                .with_header("WWW-Authenticate", "Bearer");
            return (r, None, None);
        }
        let op = match route {
            Route::NotFound => return (Response::text(404, "not found"), None, None),
            Route::Health => {
                let r = Response::text(405, "method not allowed: use GET")
                    .with_header("Allow", "GET, HEAD");
                return (r, None, None);
            }
            _ if req.method != "POST" => {
                let r = Response::text(405, "method not allowed: use POST")
                    .with_header("Allow", "POST");
                return (r, None, None);
            }
            Route::UnsupportedType(kind) => {
                let kind: String = kind.chars().take(32).collect();
                let error = Error {
                    Error: format!("unsupported key type {kind:?}: only {KEY_TYPE:?} keys exist"),
                };
                return (Response::json(&error, 128), None, None);
            }
            Route::Key(op) => op,
        };
        let outcome = match op {
            Operation::Generate => self.generate(req.body),
            Operation::Encrypt => self.encrypt(req.body),
            Operation::Decrypt => self.decrypt(req.body),
        };
        match outcome {
            Ok((response, key)) => (response, Some(key), None),
            Err((failure, key)) => (Response::text(500, &failure.public()), key, Some(failure)),
        }
    }

    fn generate(&self, body: &[u8]) -> Outcome {
        let req = request::parse_gen(body).map_err(|e| (Failure::BadRequest(e), None))?;
        let key = req.key;
        let info = match self.store.generate(&key) {
            Ok(Generated::Created) => format!("{key} Generated"),
            // Sic: the original service's words, which clients may match.
            Ok(Generated::Existed) => "Key was exsits".to_owned(),
            Err(e) => return Err((Failure::Key(key.clone(), e), Some(key))),
        };
        Ok((Response::json(&Info { Info: info }, 256), key))
    }

    fn encrypt(&self, body: &[u8]) -> Outcome {
        let req = request::parse_encrypt(body).map_err(|e| (Failure::BadRequest(e), None))?;
        let key = req.key;
        let ciphertext = match self.store.encrypt(&key, req.plaintext.as_bytes()) {
            Ok(c) => hex::encode(c),
            Err(e) => return Err((Failure::Key(key.clone(), e), Some(key))),
        };
        let reply = Ciphertext {
            ciphertext: &ciphertext,
        };
        Ok((Response::json(&reply, ciphertext.len() + 32), key))
    }

    fn decrypt(&self, body: &[u8]) -> Outcome {
        let req = request::parse_decrypt(body).map_err(|e| (Failure::BadRequest(e), None))?;
        let key = req.key;
        let plain = match self.store.decrypt(&key, &req.ciphertext) {
            Ok(p) => p,
            Err(e) => return Err((Failure::Key(key.clone(), e), Some(key))),
        };
        let Ok(text) = std::str::from_utf8(&plain) else {
            return Err((Failure::NotText(key.clone()), Some(key)));
        };
        // JSON escapes a byte as at most six (\u00XX).
        let reply = Plaintext { plaintext: text };
        Ok((Response::json(&reply, text.len() * 6 + 32), key))
    }
}

type Outcome = Result<(Response, KeyId), (Failure, Option<KeyId>)>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::eaas::keystore::{FileKeyStore, KeyBits};
    use crate::eaas::passphrase::Passphrase;

    fn service(dir: &std::path::Path, token: Option<&str>) -> Service {
        let store = FileKeyStore::open(
            dir.join("keys"),
            Passphrase::from_value(b"test passphrase", "test").unwrap(),
            KeyBits::DEFAULT,
        )
        .unwrap();
        Service::new(
            Box::new(store),
            token.map(|t| Token::from_value(t.as_bytes()).unwrap()),
        )
    }

    fn call(s: &Service, method: &str, path: &str, body: &str) -> Response {
        call_auth(s, method, path, body, None)
    }

    fn call_auth(
        s: &Service,
        method: &str,
        path: &str,
        body: &str,
        auth: Option<&str>,
    ) -> Response {
        s.handle(&Request {
            method,
            path,
            authorization: auth.map(str::as_bytes),
            body: body.as_bytes(),
            peer: None,
        })
    }

    fn json(r: &Response) -> serde_json::Value {
        assert_eq!(r.content_type, JSON, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).unwrap()
    }

    fn text(r: &Response) -> String {
        assert_eq!(r.content_type, TEXT);
        let s = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&s).is_err(),
            "{s}"
        );
        s
    }

    #[test]
    fn routes() {
        assert_eq!(route("/"), Route::Health);
        assert_eq!(route("/gen/key/rsa"), Route::Key(Operation::Generate));
        assert_eq!(route("/key/encrypt/rsa"), Route::Key(Operation::Encrypt));
        assert_eq!(route("/key/decrypt/rsa"), Route::Key(Operation::Decrypt));
        assert_eq!(route("/gen/key/aes"), Route::UnsupportedType("aes"));
        assert_eq!(route("/key/decrypt/ec"), Route::UnsupportedType("ec"));
        for p in [
            "",
            "/x",
            "/gen/key/",
            "/gen/key/rsa/",
            "/gen/key/a/b",
            "/key/rsa",
        ] {
            assert_eq!(route(p), Route::NotFound, "{p}");
        }
    }

    /// The whole API on one key (one key generation keeps the test fast).
    #[test]
    fn gen_encrypt_decrypt_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        check_api(&service(dir.path(), None));
    }

    /// Every endpoint, reply and error of the API on `s`, whose store has
    /// no key `dropzone/rsa` yet and makes 2048-bit keys: shared by the
    /// stores, whose replies must not differ.
    pub(crate) fn check_api(s: &Service) {
        let r = call(s, "GET", "/", "");
        assert_eq!(r.status, 200);
        assert_eq!(json(&r)["service"], "dropzone-eaas");
        assert_eq!(json(&r)["status"], "ok");

        let gen_body = r#"{"secret_path": "dropzone/rsa", "secret_version": "1"}"#;
        let r = call(s, "POST", "/gen/key/rsa", gen_body);
        assert_eq!(r.status, 200);
        assert_eq!(json(&r)["Info"], "dropzone/rsa v1 Generated");
        // Idempotent; the version may be a number.
        let r = call(
            s,
            "POST",
            "/gen/key/rsa",
            r#"{"secret_path": "dropzone/rsa", "secret_version": 1}"#,
        );
        assert_eq!(json(&r)["Info"], "Key was exsits");

        let dek = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let enc = |version: &str| {
            let body = format!(
                r#"{{"secret_path": "dropzone/rsa", "secret_version": {version}, "plaintext": "{dek}"}}"#
            );
            let r = call(s, "POST", "/key/encrypt/rsa", &body);
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            json(&r)["ciphertext"].as_str().unwrap().to_owned()
        };
        let c1 = enc("\"1\"");
        let c2 = enc("1");
        assert_eq!(c1.len(), 512);
        assert!(c1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(c1, c2);
        let dec = |c: &str| {
            let body = format!(
                r#"{{"secret_path": "dropzone/rsa", "secret_version": 1, "ciphertext": "{c}"}}"#
            );
            call(s, "POST", "/key/decrypt/rsa", &body)
        };
        for c in [&c1, &c2] {
            let r = dec(c);
            assert_eq!(r.status, 200);
            assert_eq!(json(&r)["plaintext"], dek);
        }

        // Tampered ciphertext: 500, plain text, and the same message for any
        // flipped bit.
        let mut bytes = hex::decode(&c1).unwrap();
        bytes[100] ^= 0x04;
        let r = dec(&hex::encode(&bytes));
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("does not decrypt"));
        let r = dec(&c1[2..]);
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("does not decrypt"));
        let r = dec("zz");
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("not a hex string"));

        // Unknown key or version.
        let r = call(
            s,
            "POST",
            "/key/encrypt/rsa",
            r#"{"secret_path": "dropzone/rsa", "secret_version": "2", "plaintext": "x"}"#,
        );
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("dropzone/rsa v2 does not exist"));
        // Too long a plaintext.
        let long = "a".repeat(215);
        let r = call(
            s,
            "POST",
            "/key/encrypt/rsa",
            &format!(
                r#"{{"secret_path": "dropzone/rsa", "secret_version": "1", "plaintext": "{long}"}}"#
            ),
        );
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("at most 214 bytes"));
        // Missing field, bad JSON, bad path.
        let r = call(s, "POST", "/key/encrypt/rsa", gen_body);
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("missing field `plaintext`"));
        let r = call(s, "POST", "/gen/key/rsa", "{");
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("not valid JSON"));
        let r = call(
            s,
            "POST",
            "/gen/key/rsa",
            r#"{"secret_path": "../x", "secret_version": "1"}"#,
        );
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("invalid secret_path"));

        // Unsupported key type: 200 with Error; unknown path 404; wrong method 405.
        let r = call(s, "POST", "/gen/key/aes", gen_body);
        assert_eq!(r.status, 200);
        assert!(json(&r)["Error"].as_str().unwrap().contains("aes"));
        assert_eq!(call(s, "POST", "/nope", "").status, 404);
        let r = call(s, "GET", "/gen/key/rsa", "");
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, [("Allow", "POST")]);
        assert_eq!(call(s, "POST", "/", "").status, 405);
    }

    #[test]
    fn decrypted_non_text_is_an_error_not_mojibake() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path(), None);
        let body = r#"{"secret_path": "bin", "secret_version": "7"}"#;
        assert_eq!(call(&s, "POST", "/gen/key/rsa", body).status, 200);
        let key = KeyId {
            path: crate::eaas::secret::SecretPath::parse("bin").unwrap(),
            version: crate::eaas::secret::SecretVersion::parse("7").unwrap(),
        };
        let c = s.store().encrypt(&key, &[0xff, 0xfe]).unwrap();
        let body = format!(
            r#"{{"secret_path": "bin", "secret_version": "7", "ciphertext": "{}"}}"#,
            hex::encode(c)
        );
        let r = call(&s, "POST", "/key/decrypt/rsa", &body);
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("not UTF-8"));
    }

    #[test]
    fn token_is_required_except_for_health() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path(), Some("the-token-0123456789"));
        assert_eq!(call(&s, "GET", "/", "").status, 200);
        for (method, path) in [("POST", "/gen/key/rsa"), ("POST", "/nope"), ("POST", "/")] {
            let r = call(&s, method, path, "{}");
            assert_eq!(r.status, 401, "{path}");
            assert_eq!(r.headers, [("WWW-Authenticate", "Bearer")]);
            let r = call_auth(&s, method, path, "{}", Some("Bearer wrong"));
            assert_eq!(r.status, 401, "{path}");
        }
        let r = call_auth(
            &s,
            "POST",
            "/gen/key/rsa",
            "{}",
            Some("Bearer the-token-0123456789"),
        );
        assert_eq!(r.status, 500);
        assert!(text(&r).contains("missing field"));
        let r = call_auth(&s, "POST", "/nope", "", Some("Bearer the-token-0123456789"));
        assert_eq!(r.status, 404);
    }

    /// Ten concurrent generations of one key: one "Generated", nine
    /// "Key was exsits", one file.
    #[test]
    fn concurrent_gen_creates_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path(), None);
        let body = r#"{"secret_path": "race/rsa", "secret_version": "1"}"#;
        let barrier = std::sync::Barrier::new(10);
        let infos: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..10)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let r = call(&s, "POST", "/gen/key/rsa", body);
                        json(&r)["Info"].as_str().unwrap().to_owned()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            infos.iter().filter(|i| i.ends_with("Generated")).count(),
            1,
            "{infos:?}"
        );
        assert_eq!(infos.iter().filter(|i| *i == "Key was exsits").count(), 9);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("keys/race/rsa"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["v1.p8"]);
    }
}
