//! The client against a tiny in-test HTTP server that answers the way the
//! original EaaS does (HTTP 500 with a plain-text body for most failures,
//! 200 with `{"Error": ...}` for some), and against no server at all.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// The context every test wraps under (these backends ignore it).
fn ctx() -> WrapContext {
    WrapContext::for_user(&crate::username::UserName::parse("alice").unwrap())
}

/// A request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the test server answers.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    delay: Duration,
}

fn answer(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status,
        content_type,
        body: body.into(),
        delay: Duration::ZERO,
    }
}

fn json(status: u16, value: serde_json::Value) -> Answer {
    answer(status, "application/json", value.to_string())
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 that answers each request with
/// `handler`, one connection per request (`Connection: close`).
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TestServer::on(listener, Arc::new(handler))
    }

    fn on(listener: TcpListener, handler: Arc<Handler>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (seen, connections, stop) = (seen.clone(), connections.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (seen, handler) = (seen.clone(), handler.clone());
                    thread::spawn(move || serve_one(stream, &seen, &*handler));
                }
            });
        }
        TestServer {
            addr,
            seen,
            connections,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_one(stream: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap();
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(&mut reader, &mut body).unwrap();
    let request = Seen {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    };
    seen.lock().unwrap().push(request.clone());
    let a = handler(&request);
    thread::sleep(a.delay);
    let mut out = stream;
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&a.body);
}

/// Answers like the original EaaS for a key that exists: "RSA" is XOR with
/// 0x5a, so that the tests can check what was sent.
fn original(seen: &Seen) -> Answer {
    let field = |name: &str| seen.body.get(name).and_then(|v| v.as_str()).unwrap_or("");
    match seen.path.as_str() {
        "/gen/key/rsa" => json(200, serde_json::json!({"Info": "Key was exsits"})),
        "/key/encrypt/rsa" => {
            let ct: Vec<u8> = field("plaintext").bytes().map(|b| b ^ 0x5a).collect();
            json(200, serde_json::json!({"ciphertext": hex::encode(ct)}))
        }
        "/key/decrypt/rsa" => match hex::decode(field("ciphertext")) {
            Ok(ct) => {
                let pt: Vec<u8> = ct.iter().map(|b| b ^ 0x5a).collect();
                json(
                    200,
                    serde_json::json!({"plaintext": String::from_utf8(pt).unwrap()}),
                )
            }
            Err(_) => answer(
                500,
                "text/plain",
                "Internal Server Error\nValueError: non-hexadecimal number found",
            ),
        },
        _ => answer(404, "text/html", "<h1>Not Found</h1>"),
    }
}

/// `handler`, except that `/gen/key/rsa` succeeds (a wrap asks for its
/// master key first).
fn with_gen(
    handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
) -> impl Fn(&Seen) -> Answer + Send + Sync + 'static {
    move |seen| {
        if seen.path == "/gen/key/rsa" {
            json(200, serde_json::json!({"Info": "Key was exsits"}))
        } else {
            handler(seen)
        }
    }
}

fn options(url: String) -> EaasOptions {
    let mut o = EaasOptions::new(url, "dropzone/rsa".into(), "1".into());
    o.retry_delays = vec![Duration::from_millis(20), Duration::from_millis(40)];
    o
}

fn client(url: String) -> EaasKms {
    EaasKms::new(options(url)).unwrap()
}

const DEK: [u8; 32] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];

fn refused(r: Result<impl Sized, KmsError>) -> String {
    match r {
        Err(KmsError::Refused(m)) => m,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got success"),
    }
}

fn unavailable(r: Result<impl Sized, KmsError>) -> String {
    match r {
        Err(KmsError::Unavailable(m)) => m,
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("expected unavailable, got success"),
    }
}

#[test]
fn wire_format_round_trip_and_token() {
    let server = TestServer::start(original);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-t0ken\n").unwrap();
    let mut o = options(format!("{}/", server.url()));
    o.token_file = Some(token);
    let kms = EaasKms::new(o).unwrap();
    assert_eq!(kms.backend(), "eaas");
    assert_eq!(kms.url(), server.url());
    assert!(!format!("{kms:?}").contains("s3cret"));
    let current = kms.current();
    assert_eq!(current.secret_path, "dropzone/rsa");
    assert_eq!(current.secret_version, "1");

    kms.ensure_master_key(&current).unwrap();
    let wrapped = kms.wrap(&DEK, &current, &ctx()).unwrap();
    // The wrapped bytes are the hex-decoded ciphertext: here, the 64 hex
    // characters XOR 0x5a.
    assert_eq!(wrapped.len(), 64);
    let key = kms.unwrap(&wrapped, &current, &ctx()).unwrap();
    assert_eq!(*key, DEK);

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert_eq!(s.header("authorization"), Some("Bearer s3cret-t0ken"));
        assert_eq!(s.body["secret_path"], "dropzone/rsa");
        // A decimal string, as the original accepts.
        assert_eq!(s.body["secret_version"], "1");
    }
    assert_eq!(seen[0].path, "/gen/key/rsa");
    assert_eq!(seen[0].body.as_object().unwrap().len(), 2);
    assert_eq!(seen[1].path, "/key/encrypt/rsa");
    assert_eq!(
        seen[1].body["plaintext"],
        "00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    );
    assert!(seen[1].body.get("ciphertext").is_none());
    assert_eq!(seen[2].path, "/key/decrypt/rsa");
    let ct = seen[2].body["ciphertext"].as_str().unwrap();
    assert_eq!(ct, hex::encode(&wrapped));
    assert_eq!(ct, ct.to_lowercase());
    assert!(seen[2].body.get("plaintext").is_none());

    // Another version is sent as recorded.
    let v7 = MasterKeyRef {
        secret_path: "other/path".into(),
        secret_version: "7".into(),
    };
    kms.unwrap(&wrapped, &v7, &ctx()).unwrap();
    let last = server.seen().pop().unwrap();
    assert_eq!(last.body["secret_path"], "other/path");
    assert_eq!(last.body["secret_version"], "7");
}

#[test]
fn generate_accepts_generated_and_exists_and_needs_info() {
    for info in ["Key was exsits", "dropzone/rsa:2 Generated"] {
        let server = TestServer::start(move |_| json(200, serde_json::json!({ "Info": info })));
        let kms = client(server.url());
        kms.ensure_master_key(&kms.current()).unwrap();
    }
    let server = TestServer::start(|_| json(200, serde_json::json!({"Status": "ok"})));
    let kms = client(server.url());
    let m = refused(kms.ensure_master_key(&kms.current()));
    assert!(m.contains("\"Info\""), "{m}");
}

#[test]
fn http_500_plain_text_is_refused_with_status_and_excerpt_and_not_retried() {
    let server = TestServer::start(|_| {
        answer(
            500,
            "text/plain",
            "Internal Server Error\n\x1b[31mCKR_KEY_HANDLE_INVALID\x07: no key dropzone/rsa version 9\r\n",
        )
    });
    let kms = client(server.url());
    let m = refused(kms.unwrap(&[1, 2, 3], &kms.current(), &ctx()));
    assert!(m.contains("HTTP 500 Internal Server Error"), "{m}");
    assert!(m.contains("/key/decrypt/rsa"), "{m}");
    assert!(m.contains("CKR_KEY_HANDLE_INVALID"), "{m}");
    assert!(m.contains("no key dropzone/rsa version 9"), "{m}");
    assert!(!m.chars().any(char::is_control), "{m:?}");
    assert_eq!(server.seen().len(), 1, "HTTP errors are not retried");
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn statuses_that_mean_later_are_unavailable() {
    for status in [502, 503, 504, 429] {
        let server = TestServer::start(move |_| answer(status, "text/plain", "busy"));
        let kms = client(server.url());
        let m = unavailable(kms.wrap(&DEK, &kms.current(), &ctx()));
        assert!(m.contains(&status.to_string()) && m.contains("busy"), "{m}");
        assert_eq!(server.seen().len(), 1);
    }
    for status in [400, 401, 403, 404] {
        let server = TestServer::start(move |_| answer(status, "text/plain", "no"));
        let kms = client(server.url());
        refused(kms.wrap(&DEK, &kms.current(), &ctx()));
    }
}

#[test]
fn a_200_with_an_error_field_is_refused() {
    let server = TestServer::start(|_| {
        json(
            200,
            serde_json::json!({"Error": "Key type is not supported"}),
        )
    });
    let kms = client(server.url());
    let current = kms.current();
    for m in [
        refused(kms.wrap(&DEK, &current, &ctx())),
        refused(kms.unwrap(&[1; 256], &current, &ctx())),
        refused(kms.ensure_master_key(&current)),
    ] {
        assert!(
            m.contains("HTTP 200") && m.contains("Key type is not supported"),
            "{m}"
        );
    }
}

#[test]
fn a_200_without_the_field_is_refused() {
    let server = TestServer::start(|_| json(200, serde_json::json!({"Info": "hello"})));
    let kms = client(server.url());
    let m = refused(kms.wrap(&DEK, &kms.current(), &ctx()));
    assert!(m.contains("/key/encrypt/rsa"), "{m}");
    assert!(m.contains("\"ciphertext\""), "{m}");
    assert!(m.contains("hello"), "encrypt replies may be quoted: {m}");
    let m = refused(kms.unwrap(&[1; 256], &kms.current(), &ctx()));
    assert!(m.contains("\"plaintext\""), "{m}");
    assert!(
        !m.contains("hello"),
        "decrypt replies are never quoted: {m}"
    );
}

#[test]
fn a_200_that_is_not_json_is_refused() {
    let server = TestServer::start(|_| answer(200, "text/html", "<html>proxy says hi</html>"));
    let kms = client(server.url());
    let m = refused(kms.wrap(&DEK, &kms.current(), &ctx()));
    assert!(m.contains("not JSON") && m.contains("proxy says hi"), "{m}");
    let m = refused(kms.unwrap(&[1; 256], &kms.current(), &ctx()));
    assert!(m.contains("not JSON") && !m.contains("proxy"), "{m}");

    // JSON, but not an object.
    let server = TestServer::start(|_| json(200, serde_json::json!(["ciphertext", "00"])));
    let kms = client(server.url());
    let m = refused(kms.wrap(&DEK, &kms.current(), &ctx()));
    assert!(m.contains("expected shape"), "{m}");
}

#[test]
fn unusable_plaintexts_are_refused_without_being_shown() {
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";
    for bad in [
        serde_json::json!(secret),                  // 62 characters
        serde_json::json!(format!("{secret}ef12")), // 66 characters
        serde_json::json!(format!("{secret}zz")),   // not hex
        serde_json::json!(""),
        serde_json::json!(12345),
    ] {
        let server = TestServer::start(move |_| json(200, serde_json::json!({ "plaintext": bad })));
        let kms = client(server.url());
        let m = match kms.unwrap(&[1; 256], &kms.current(), &ctx()) {
            Err(KmsError::Refused(m)) => m,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted a bad plaintext"),
        };
        assert!(!m.contains("0123456789"), "key material in {m}");
        assert!(!m.contains("12345"), "reply quoted in {m}");
    }
    // Upper-case hex is still hex.
    let upper = hex::encode_upper(DEK);
    let server = TestServer::start(move |_| json(200, serde_json::json!({ "plaintext": upper })));
    let kms = client(server.url());
    assert_eq!(*kms.unwrap(&[1; 256], &kms.current(), &ctx()).unwrap(), DEK);
}

#[test]
fn unusable_ciphertexts_are_refused() {
    for bad in [
        serde_json::json!("xyz"),
        serde_json::json!("abc"),
        serde_json::json!(""),
        serde_json::json!(5),
        serde_json::json!("00".repeat(9000)),
    ] {
        let server = TestServer::start(with_gen(move |_| {
            json(200, serde_json::json!({ "ciphertext": bad }))
        }));
        let kms = client(server.url());
        let m = refused(kms.wrap(&DEK, &kms.current(), &ctx()));
        assert!(m.contains("unusable ciphertext"), "{m}");
    }
}

#[test]
fn long_bodies_are_cut_to_a_short_excerpt() {
    let server = TestServer::start(with_gen(|_| answer(500, "text/plain", "x".repeat(100_000))));
    let kms = client(server.url());
    let m = refused(kms.wrap(&DEK, &kms.current(), &ctx()));
    assert!(m.len() < 400, "{} bytes: {m}", m.len());
    assert!(
        m.contains(&format!("{}...", "x".repeat(EXCERPT_CHARS - 3))),
        "{m}"
    );
}

#[test]
fn excerpts_are_short_single_lines() {
    assert_eq!(excerpt(b""), "(empty body)");
    assert_eq!(excerpt(b" \r\n"), "(empty body)");
    assert_eq!(excerpt(b"a\r\n\r\nb\tc\x1b[0m\x00d"), "a b c[0md");
    assert_eq!(
        excerpt("é".repeat(300).as_bytes()).chars().count(),
        EXCERPT_CHARS
    );
    assert_eq!(excerpt(&[0xff, b'o', b'k']), "\u{fffd}ok");
}

#[test]
fn connection_refused_is_retried_then_unavailable() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = options(format!("http://127.0.0.1:{port}"));
    o.retry_delays = DEFAULT_RETRY_DELAYS.to_vec();
    let kms = EaasKms::new(o).unwrap();
    let started = Instant::now();
    let m = unavailable(kms.wrap(&DEK, &kms.current(), &ctx()));
    let took = started.elapsed();
    assert!(
        m.contains("cannot connect") && m.contains("3 attempts"),
        "{m}"
    );
    assert!(m.to_lowercase().contains("refused"), "{m}");
    assert!(took >= Duration::from_millis(500), "no backoff: {took:?}");
    assert!(took < Duration::from_secs(5), "too slow: {took:?}");
    assert!(matches!(
        kms.ensure_master_key(&kms.current()),
        Err(KmsError::Unavailable(_))
    ));
}

#[test]
fn a_service_that_comes_back_during_the_retries_is_used() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut o = options(format!("http://{addr}"));
    o.retry_delays = vec![Duration::from_millis(300), Duration::from_millis(1000)];
    let kms = EaasKms::new(o).unwrap();
    let starter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        TestServer::on(TcpListener::bind(addr).unwrap(), Arc::new(original))
    });
    let wrapped = kms.wrap(&DEK, &kms.current(), &ctx()).unwrap();
    let server = starter.join().unwrap();
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/gen/key/rsa", "/key/encrypt/rsa"]);
    assert_eq!(*kms.unwrap(&wrapped, &kms.current(), &ctx()).unwrap(), DEK);
}

#[test]
fn a_slow_reply_times_out_and_is_not_retried() {
    let server = TestServer::start(|seen| {
        let mut a = original(seen);
        a.delay = Duration::from_secs(3);
        a
    });
    let mut o = options(server.url());
    o.request_timeout = Duration::from_millis(300);
    let kms = EaasKms::new(o).unwrap();
    let started = Instant::now();
    let m = unavailable(kms.unwrap(&[1; 64], &kms.current(), &ctx()));
    let took = started.elapsed();
    assert!(m.contains("did not answer within 300ms"), "{m}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let misconfigured = |o: EaasOptions| match EaasKms::new(o) {
        Err(KmsError::Misconfigured(m)) => m,
        Err(e) => panic!("expected misconfigured, got {e}"),
        Ok(_) => panic!("accepted bad settings"),
    };
    for url in [
        "ftp://eaas:21",
        "eaas:8443",
        "http://user:pw@eaas:8443",
        "http://eaas:8443/?x=1",
        "not a url",
    ] {
        let m = misconfigured(options(url.into()));
        assert!(!m.contains("pw@"), "{m}");
    }
    let mut o = options("http://eaas:8443".into());
    o.ca_file = Some(dir.path().join("ca.pem"));
    assert!(misconfigured(o).contains("not https"));

    let mut o = options("https://eaas:8443".into());
    o.ca_file = Some(dir.path().join("missing.pem"));
    assert!(misconfigured(o).contains("missing.pem"));
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let mut o = options("https://eaas:8443".into());
    o.ca_file = Some(dir.path().join("junk.pem"));
    assert!(misconfigured(o).contains("no PEM certificate"));

    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let mut o = options("http://eaas:8443".into());
    o.token_file = Some(dir.path().join("empty"));
    assert!(misconfigured(o).contains("empty"));
    std::fs::write(dir.path().join("spaced"), "a b\n").unwrap();
    let mut o = options("http://eaas:8443".into());
    o.token_file = Some(dir.path().join("spaced"));
    misconfigured(o);

    let mut o = options("http://eaas:8443".into());
    o.secret_version = "v1".into();
    assert!(matches!(EaasKms::new(o), Err(KmsError::InvalidVersion(_))));
    let mut o = options("http://eaas:8443".into());
    o.secret_path = "a path".into();
    misconfigured(o);

    // https without a CA file uses the system's roots.
    EaasKms::new(options("https://eaas.example:8443/base".into())).unwrap();
}

#[test]
fn the_first_wrap_under_a_key_asks_for_it_once() {
    let server = TestServer::start(original);
    let kms = client(server.url());
    let current = kms.current();
    kms.wrap(&DEK, &current, &ctx()).unwrap();
    kms.wrap(&DEK, &current, &ctx()).unwrap();
    let v2 = MasterKeyRef {
        secret_path: current.secret_path.clone(),
        secret_version: "2".into(),
    };
    let wrapped = kms.wrap(&DEK, &v2, &ctx()).unwrap();
    kms.unwrap(&wrapped, &v2, &ctx()).unwrap();
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/gen/key/rsa",
            "/key/encrypt/rsa",
            "/key/encrypt/rsa",
            "/gen/key/rsa",
            "/key/encrypt/rsa",
            "/key/decrypt/rsa"
        ]
    );
    assert_eq!(server.seen()[3].body["secret_version"], "2");

    // A failed request for the key is asked again next time.
    let server = TestServer::start(|_| answer(503, "text/plain", "starting"));
    let kms = client(server.url());
    unavailable(kms.wrap(&DEK, &kms.current(), &ctx()));
    unavailable(kms.wrap(&DEK, &kms.current(), &ctx()));
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/gen/key/rsa", "/gen/key/rsa"]);
}
