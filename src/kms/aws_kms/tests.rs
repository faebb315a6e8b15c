//! Unit tests of the AWS KMS client that need no service: reply and error
//! mapping, the endpoint rule, the request shapes. The calls themselves are
//! tested against moto in tests/it/aws_kms.rs.

use super::*;

#[test]
fn errors_are_refusals_or_transient_by_type() {
    let refused = check_reply(
        Op::Decrypt,
        400,
        br#"{"__type":"com.amazonaws.kms#InvalidCiphertextException","message":"bad"}"#,
    )
    .unwrap_err();
    assert!(matches!(refused, KmsError::Refused(_)), "{refused}");
    assert_eq!(
        refused.to_string(),
        "key service refused: AWS KMS Decrypt: InvalidCiphertextException (HTTP 400): bad"
    );
    for (status, body) in [
        (
            400,
            r#"{"__type":"ThrottlingException","message":"slow down"}"#,
        ),
        (500, r#"{"__type":"KMSInternalException"}"#),
        (503, "<html>gateway</html>"),
    ] {
        let e = check_reply(Op::Encrypt, status, body.as_bytes()).unwrap_err();
        assert!(e.is_transient(), "{status} {body}: {e}");
    }
    let e = check_reply(
        Op::Encrypt,
        400,
        br#"{"__type":"NotFoundException","Message":"Key 'x' does not exist"}"#,
    )
    .unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("Key 'x' does not exist"), "{e}");
    assert!(check_reply(Op::Encrypt, 200, b"{}").is_ok());
    let e = check_reply(
        Op::DescribeKey,
        403,
        b"<?xml version=\"1.0\"?><ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code>\
          <Message>The request signature we calculated does not match</Message></Error></Errors></ErrorResponse>",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "key service refused: AWS KMS DescribeKey: SignatureDoesNotMatch (HTTP 403): \
         The request signature we calculated does not match"
    );
}

#[test]
fn endpoint_rule_and_signed_host() {
    assert_eq!(
        check_endpoint("http://127.0.0.1:5000/").unwrap(),
        (
            "http://127.0.0.1:5000".to_owned(),
            "127.0.0.1:5000".to_owned()
        )
    );
    assert_eq!(
        check_endpoint("https://kms.eu-west-1.amazonaws.com")
            .unwrap()
            .1,
        "kms.eu-west-1.amazonaws.com"
    );
    // The default port is not in the Host header reqwest sends.
    assert_eq!(check_endpoint("https://h:443").unwrap().1, "h");
    for bad in [
        "ftp://h",
        "http://u:p@h",
        "http://h/path",
        "http://h/?q",
        "nonsense",
    ] {
        assert!(
            matches!(check_endpoint(bad), Err(KmsError::Misconfigured(_))),
            "{bad}"
        );
    }
}

#[test]
fn region_and_key_id_rules() {
    assert!(check_region("us-east-1").is_ok());
    for bad in ["", "US-EAST-1", "us east", "a/b"] {
        assert!(check_region(bad).is_err(), "{bad}");
    }
    assert!(check_key_id("alias/dropzone").is_ok());
    assert!(check_key_id("arn:aws:kms:us-east-1:123456789012:key/1234abcd").is_ok());
    assert!(check_key_id("").is_err());
    assert!(check_key_id("a b").is_err());
}

#[test]
fn context_names_the_user_and_versions_are_fixed() {
    let alice = crate::username::UserName::parse("alice").unwrap();
    let ctx = WrapContext::for_user(&alice);
    assert_eq!(context(&ctx).to_string(), r#"{"dropzone:user":"alice"}"#);
    let key = |v: &str| MasterKeyRef {
        secret_path: "k".into(),
        secret_version: v.into(),
    };
    assert!(check_version(&key(SECRET_VERSION)).is_ok());
    assert!(matches!(
        check_version(&key("2")),
        Err(KmsError::InvalidVersion(_))
    ));
}

#[test]
fn ciphertext_replies_are_checked() {
    let ok = CiphertextReply {
        ciphertext_blob: BASE64.encode([7u8; 100]),
        key_id: None,
    };
    assert_eq!(ok.decode(Op::Encrypt).unwrap(), vec![7u8; 100]);
    for bad in ["", "***", &BASE64.encode(vec![0u8; MAX_WRAPPED_LEN + 1])] {
        let reply = CiphertextReply {
            ciphertext_blob: bad.to_owned(),
            key_id: None,
        };
        assert!(reply.decode(Op::Encrypt).is_err());
    }
}

#[test]
fn debug_shows_no_secrets() {
    let kms = AwsKms::new(
        AwsKmsOptions::new("alias/dz".into(), "us-east-1".into()),
        Provider::Static {
            credentials: Credentials::new(
                "AKID".into(),
                "SECRET".into(),
                Some("TOKEN".into()),
                None,
            ),
            source: "test".into(),
        },
    )
    .unwrap();
    let shown = format!("{kms:?}");
    assert!(shown.contains("kms.us-east-1.amazonaws.com"), "{shown}");
    assert!(
        !shown.contains("SECRET") && !shown.contains("TOKEN"),
        "{shown}"
    );
    assert_eq!(kms.current().secret_path, "alias/dz");
    assert_eq!(kms.current().secret_version, SECRET_VERSION);
}
