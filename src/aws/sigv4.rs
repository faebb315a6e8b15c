//! AWS Signature Version 4 for one HTTP request (the published algorithm:
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>).
//!
//! The caller gives the method, an already URI-encoded path, the query
//! pairs, the headers to sign (`host` among them) and the body; [`sign`]
//! returns the headers to add. For S3, [`sign_payload_hash`] takes the
//! payload's hash instead of the body ([`UNSIGNED_PAYLOAD`], or the hex
//! SHA-256 the caller also sends as `x-amz-content-sha256`, which it must
//! sign), and [`uri_encode_path`] encodes an object key's path once: S3,
//! unlike the other services, does not encode the path a second time in the
//! canonical request. It is
//! checked against AWS's published test suite vectors (`get-vanilla`,
//! `get-vanilla-query-order-key-case`, `post-vanilla`,
//! `post-x-www-form-urlencoded`, `post-sts-header-after`) in the tests below.
//!
//! Written here on the `hmac` and `sha2` crates the store already uses
//! rather than taken from `aws-sigv4`, whose smithy runtime crates would
//! add a second `hmac`/`sha2` line and a dozen crates to build for about a
//! hundred lines of published arithmetic (see Cargo.toml).

use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::credentials::Credentials;

/// The signing algorithm's name, first word of the `Authorization` header.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What to sign: one request.
pub(crate) struct Request<'a> {
    /// `GET`, `POST`, ...
    pub(crate) method: &'a str,
    /// The path, already URI-encoded as sent (`/` for the JSON APIs).
    pub(crate) path: &'a str,
    /// Query parameters, unencoded; sorted and encoded here.
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// Headers to sign, `host` included; names in any case.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub(crate) body: &'a [u8],
}

/// Where the request goes: the credential scope's region and service.
pub(crate) struct Scope<'a> {
    /// e.g. `us-east-1`.
    pub(crate) region: &'a str,
    /// e.g. `kms`.
    pub(crate) service: &'a str,
}

/// The payload hash S3 accepts in place of the body's SHA-256 (the body is
/// then not covered by the signature; TLS protects it).
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Signs `request` at time `now`: the headers to add to it, in order:
/// `x-amz-date`, then `x-amz-security-token` for temporary credentials
/// (both signed), then `authorization`.
pub(crate) fn sign(
    credentials: &Credentials,
    scope: &Scope<'_>,
    request: &Request<'_>,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let payload_hash = hex::encode(Sha256::digest(request.body));
    sign_payload_hash(credentials, scope, request, &payload_hash, now)
}

/// [`sign`] with the payload hash given (`request.body` is not read): the
/// hex SHA-256 of the body or [`UNSIGNED_PAYLOAD`].
pub(crate) fn sign_payload_hash(
    credentials: &Credentials,
    scope: &Scope<'_>,
    request: &Request<'_>,
    payload_hash: &str,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let mut added = vec![("x-amz-date", amz_date.clone())];
    if let Some(token) = credentials.session_token() {
        added.push(("x-amz-security-token", token.to_owned()));
    }
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), canonical_value(v)))
        .collect();
    headers.extend(added.iter().map(|(n, v)| ((*n).to_owned(), v.clone())));
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        payload_hash,
    );
    let date = &amz_date[..8];
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{credential_scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(credentials.secret_access_key(), date, scope);
    let signature = hex::encode(hmac(&key[..], string_to_sign.as_bytes()));
    added.push((
        "authorization",
        format!(
            "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id()
        ),
    ));
    added
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(now: SystemTime) -> String {
    // "2015-08-30T12:36:00Z" -> "20150830T123600Z"
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// A header value with leading and trailing spaces removed and inner runs
/// of spaces made one, as the canonical form requires.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Query pairs URI-encoded and sorted by name, then value.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but the unreserved characters
/// (`A-Z a-z 0-9 - _ . ~`), with upper-case hex, as SigV4 requires.
pub(crate) fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An S3 object path (`/bucket/key` or `/key`) encoded as S3 wants it in
/// the URL and, unchanged, in the canonical request: every byte but the
/// unreserved characters and `/` percent-encoded.
pub(crate) fn uri_encode_path(path: &str) -> String {
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// The key for the day, region and service, derived from the secret key.
fn signing_key(secret: &str, date: &str, scope: &Scope<'_>) -> Zeroizing<[u8; 32]> {
    let seed = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = Zeroizing::new(hmac(seed.as_bytes(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&k_date[..], scope.region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&k_region[..], scope.service.as_bytes()));
    Zeroizing::new(hmac(&k_service[..], b"aws4_request"))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 accepts keys of every length, so this is never reached.
#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The test suite's fixed time, 2015-08-30T12:36:00Z.
    fn when() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn example(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token.map(str::to_owned),
            None,
        )
    }

    const SCOPE: Scope<'static> = Scope {
        region: "us-east-1",
        service: "service",
    };

    fn authorization(request: &Request<'_>, token: Option<&str>) -> String {
        let added = sign(&example(token), &SCOPE, request, when());
        assert_eq!(added[0], ("x-amz-date", "20150830T123600Z".to_owned()));
        added
            .into_iter()
            .find(|(n, _)| *n == "authorization")
            .unwrap()
            .1
    }

    const HOST: (&str, &str) = ("Host", "example.amazonaws.com");

    #[test]
    fn amz_date_format() {
        assert_eq!(amz_date(when()), "20150830T123600Z");
    }

    #[test]
    fn get_vanilla() {
        let request = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[HOST],
            body: b"",
        };
        assert_eq!(
            authorization(&request, None),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn get_vanilla_query_order_key_case() {
        let request = Request {
            method: "GET",
            path: "/",
            query: &[("Param2", "value2"), ("Param1", "value1")],
            headers: &[HOST],
            body: b"",
        };
        assert!(authorization(&request, None).ends_with(
            "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ));
    }

    #[test]
    fn post_vanilla() {
        let request = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[HOST],
            body: b"",
        };
        assert!(authorization(&request, None).ends_with(
            "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        ));
    }

    #[test]
    fn post_x_www_form_urlencoded() {
        let request = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[("Content-Type", "application/x-www-form-urlencoded"), HOST],
            body: b"Param1=value1",
        };
        let auth = authorization(&request, None);
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date,"),
            "{auth}"
        );
        assert!(
            auth.ends_with(
                "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
            ),
            "{auth}"
        );
    }

    /// `post-sts-header-after`: the session token is signed.
    #[test]
    fn post_sts_header_after() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let request = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[HOST],
            body: b"",
        };
        let added = sign(&example(Some(token)), &SCOPE, &request, when());
        assert_eq!(added[1], ("x-amz-security-token", token.to_owned()));
        let auth = &added[2].1;
        assert!(
            auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"),
            "{auth}"
        );
        assert!(
            auth.ends_with(
                "Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
            ),
            "{auth}"
        );
    }

    /// A KMS JSON call as this backend makes it (host with a port, the
    /// target and content type signed, a session token): the signature
    /// botocore 1.43 computes for the same request and time.
    #[test]
    fn a_kms_call_signs_as_botocore_does() {
        let body = br#"{"KeyId":"alias/dropzone","Plaintext":"AAAA","EncryptionContext":{"dropzone:user":"alice"}}"#;
        let request = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[
                ("content-type", "application/x-amz-json-1.1"),
                ("host", "127.0.0.1:5000"),
                ("x-amz-target", "TrentService.Encrypt"),
            ],
            body,
        };
        let scope = Scope {
            region: "us-east-1",
            service: "kms",
        };
        let added = sign(&example(Some("SESSIONTOKEN")), &scope, &request, when());
        assert_eq!(
            added[2].1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=55da335caf870140bb3564a0b904efa977e46c13f7581af8353fcfda3f91a234"
        );
    }

    /// The S3 documentation's example "GET Object" (with `Range`), from
    /// "Signature Calculations for the Authorization Header: Transferring
    /// Payload in a Single Chunk".
    #[test]
    fn s3_get_object_example() {
        let credentials = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            None,
            None,
        );
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let request = Request {
            method: "GET",
            path: &uri_encode_path("/test.txt"),
            query: &[],
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
            ],
            body: b"",
        };
        let scope = Scope {
            region: "us-east-1",
            service: "s3",
        };
        // 20130524T000000Z
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let added = sign_payload_hash(&credentials, &scope, &request, empty, when);
        assert_eq!(
            added[1].1,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // ListObjects with a query: "GET /?max-keys=2&prefix=J HTTP/1.1".
        let request = Request {
            method: "GET",
            path: "/",
            query: &[("max-keys", "2"), ("prefix", "J")],
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("x-amz-content-sha256", empty),
            ],
            body: b"",
        };
        let added = sign_payload_hash(&credentials, &scope, &request, empty, when);
        assert!(
            added[1].1.ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{}",
            added[1].1
        );
    }

    #[test]
    fn s3_paths_are_encoded_once_keeping_slashes() {
        assert_eq!(
            uri_encode_path("/bucket/dir a/f+b~c=d"),
            "/bucket/dir%20a/f%2Bb~c%3Dd"
        );
        assert_eq!(uri_encode_path("/b/\u{e9}"), "/b/%C3%A9");
    }

    #[test]
    fn header_values_are_trimmed_and_query_encoded() {
        assert_eq!(canonical_value("  a   b  c "), "a b c");
        assert_eq!(uri_encode("a b/c~*"), "a%20b%2Fc~%2A");
        assert_eq!(canonical_query(&[("b", "2"), ("a", "=")]), "a=%3D&b=2");
    }
}
