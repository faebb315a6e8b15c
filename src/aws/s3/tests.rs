//! Unit tests of the S3 client that need no service: reply parsing, error
//! mapping, addressing. The requests themselves are tested against
//! SeaweedFS in tests/it/s3_client.rs.

use super::*;

fn options(endpoint: Option<&str>, path_style: bool) -> S3Options {
    let mut o = S3Options::new("us-east-1".into(), "bkt".into());
    o.endpoint = endpoint.map(str::to_owned);
    o.path_style = path_style;
    o.credentials = CredentialSource::Given(Credentials::new(
        "AKID".into(),
        "very-secret".into(),
        None,
        None,
    ));
    o
}

#[test]
fn addressing_styles() {
    let c = S3Client::new(options(None, false)).unwrap();
    assert_eq!(c.inner.base, "https://bkt.s3.us-east-1.amazonaws.com");
    assert_eq!(c.inner.host, "bkt.s3.us-east-1.amazonaws.com");
    assert_eq!(c.inner.path_prefix, "");
    assert!(!c.inner.sign_payload);
    let c = S3Client::new(options(Some("http://127.0.0.1:8333/"), true)).unwrap();
    assert_eq!(c.inner.base, "http://127.0.0.1:8333");
    assert_eq!(c.inner.host, "127.0.0.1:8333");
    assert_eq!(c.inner.path_prefix, "/bkt");
    assert!(c.inner.sign_payload);
    assert_eq!(c.copy_source("a b/c+d"), "/bkt/a%20b/c%2Bd");
    let debug = format!("{c:?}");
    assert!(!debug.contains("very-secret"), "{debug}");
}

#[test]
fn bad_settings_are_refused() {
    for (endpoint, why) in [
        ("ftp://h", "http"),
        ("http://u:p@h", "not shown"),
        ("http://h/path", "no path"),
    ] {
        let e = S3Client::new(options(Some(endpoint), true)).unwrap_err();
        assert!(e.to_string().contains(why), "{endpoint}: {e}");
        assert!(!e.to_string().contains("u:p"), "{e}");
    }
    let mut o = options(None, true);
    o.bucket = "a/b".into();
    assert!(S3Client::new(o).unwrap_err().to_string().contains("bucket"));
    let mut o = options(None, true);
    o.region = "us east".into();
    assert!(S3Client::new(o).unwrap_err().to_string().contains("region"));
}

#[test]
fn credentials_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id");
    let secret = dir.path().join("secret");
    std::fs::write(&id, "AKFILE\n").unwrap();
    std::fs::write(&secret, "  s3cret \n").unwrap();
    let source = CredentialSource::Files {
        access_key_id: id.clone(),
        secret_access_key: secret.clone(),
    };
    let p = resolve_credentials(&source, "r").unwrap();
    let c = p
        .get(&|_, _| -> Result<Credentials, S3Error> { unreachable!() })
        .unwrap();
    assert_eq!(
        (c.access_key_id(), c.secret_access_key()),
        ("AKFILE", "s3cret")
    );
    std::fs::write(&secret, "\n").unwrap();
    let e = resolve_credentials(&source, "r").unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    std::fs::remove_file(&id).unwrap();
    let e = resolve_credentials(&source, "r").unwrap_err();
    assert!(e.to_string().contains("access key id file"), "{e}");
}

#[test]
fn error_documents() {
    let doc = |code: &str, msg: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{msg}</Message><RequestId>1</RequestId></Error>"
        )
    };
    let what = "PUT bkt/k";
    assert!(matches!(
        s3_error(412, &doc("PreconditionFailed", "x"), what),
        S3Error::PreconditionFailed
    ));
    assert!(matches!(
        s3_error(409, &doc("ConditionalRequestConflict", "x"), what),
        S3Error::PreconditionFailed
    ));
    assert!(matches!(s3_error(404, "", what), S3Error::NotFound));
    assert!(matches!(
        s3_error(404, &doc("NoSuchKey", "gone"), what),
        S3Error::NotFound
    ));
    match s3_error(404, &doc("NoSuchBucket", "no &quot;bkt&quot;"), what) {
        S3Error::Refused {
            status,
            code,
            message,
        } => {
            assert_eq!((status, code.as_str()), (404, "NoSuchBucket"));
            assert_eq!(message, "no \"bkt\"; PUT bkt/k");
        }
        other => panic!("{other:?}"),
    }
    let e = s3_error(503, &doc("SlowDown", "Please reduce"), what);
    assert!(
        matches!(&e, S3Error::Unavailable(m) if m.contains("SlowDown") && m.contains("Please reduce")),
        "{e}"
    );
    let e = s3_error(502, "<html>bad gateway</html>", what);
    assert!(
        matches!(&e, S3Error::Unavailable(m) if m.contains("bad gateway")),
        "{e}"
    );
    let e = s3_error(403, "", what);
    assert_eq!(e.to_string(), "S3 refused (HTTP 403 (no code)): PUT bkt/k");
    // A 200 reply that is an error document (CopyObject, completion).
    assert!(root_is_error(&doc("InternalError", "x")));
    assert!(root_is_error("<Error><Code>A</Code></Error>"));
    assert!(!root_is_error(
        "<?xml version=\"1.0\"?><CopyObjectResult><ETag>\"e\"</ETag></CopyObjectResult>"
    ));
    assert!(matches!(
        s3_error(200, &doc("InternalError", "x"), what),
        S3Error::Unavailable(_)
    ));
    let io: std::io::Error = S3Error::PreconditionFailed.into();
    assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
    let io: std::io::Error = S3Error::Unavailable("down".into()).into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert!(io.to_string().contains("down"));
}

#[test]
fn list_replies() {
    let reply = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
        <Name>bkt</Name><Prefix>p%2F</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>\
        <EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>\
        <NextContinuationToken>tok/1=</NextContinuationToken>\
        <Contents><Key>p/a+b%0D</Key><LastModified>2009-10-12T17:50:30.000Z</LastModified>\
        <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag><Size>434234</Size>\
        <StorageClass>STANDARD</StorageClass></Contents>\
        <CommonPrefixes><Prefix>p/d%2B/</Prefix></CommonPrefixes></ListBucketResult>";
    let page = parse_list(reply).unwrap();
    assert_eq!(page.objects.len(), 1);
    let o = &page.objects[0];
    assert_eq!(o.key, "p/a b\r");
    assert_eq!(o.size, 434_234);
    assert_eq!(o.etag, "\"fba9dede5f27731c9771645a39863328\"");
    assert_eq!(o.last_modified, 1_255_369_830);
    assert_eq!(page.common_prefixes, ["p/d+/"]);
    assert_eq!(page.next.as_deref(), Some("tok/1="));
    let last = parse_list("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
        .unwrap();
    assert_eq!(last, ListPage::default());
    assert!(
        parse_list("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>")
            .is_err()
    );
}

#[test]
fn dates_keys_and_queries() {
    assert_eq!(
        parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(1_445_412_480)
    );
    assert_eq!(parse_http_date("Thu, 1 Jan 1970 00:00:09 GMT"), Some(9));
    assert_eq!(parse_http_date("yesterday"), None);
    assert_eq!(join_key("", &["data", "alice", "a/b"]), "data/alice/a/b");
    assert_eq!(join_key("pre/", &["keks"]), "pre/keks");
    assert_eq!(join_key("pre", &[]), "pre");
    assert_eq!(
        encoded_query(&[("uploadId", "a/b+c"), ("partNumber", "2"), ("uploads", "")]),
        "partNumber=2&uploadId=a%2Fb%2Bc&uploads="
    );
    assert!(check_part(0).is_err() && check_part(10_001).is_err() && check_part(10_000).is_ok());
    assert_eq!(quoted("abc"), "\"abc\"");
    assert_eq!(quoted("\"abc\""), "\"abc\"");
    assert_eq!(escape("\"a&b\""), "&quot;a&amp;b&quot;");
}
