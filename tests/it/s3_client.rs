//! Dropzone's S3 client (`dropzone::aws::s3`) against a real SeaweedFS
//! (`weed mini`, see [`super::seaweed`]): every call the object store
//! backend makes, the conditions it relies on, and its errors.

use std::collections::BTreeMap;
use std::thread;

use dropzone::aws::s3::{Condition, S3Client, S3Error};

use super::seaweed::SeaweedFs;

const MIB: usize = 1024 * 1024;

/// `len` bytes that differ per `seed` and per position.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 11) as u8))
        .collect()
}

#[test]
fn objects_round_trip_with_metadata_ranges_and_delete() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    let body = pattern(1, 300_000);
    let etag = c
        .put(
            "data/alice/dir a/f+1",
            &body,
            &[("Mode", "100644"), ("mtime", "1700000000")],
            Condition::Always,
        )
        .unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let info = c.head("data/alice/dir a/f+1").unwrap();
    assert_eq!(info.key, "data/alice/dir a/f+1");
    assert_eq!(info.size, 300_000);
    assert_eq!(info.etag, etag);
    assert!(info.last_modified > 1_700_000_000, "{info:?}");
    let expected: BTreeMap<String, String> = [("mode", "100644"), ("mtime", "1700000000")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(info.metadata, expected);

    let (got, info2) = c.get("data/alice/dir a/f+1").unwrap();
    assert_eq!(&got[..], &body[..]);
    assert_eq!(info2.metadata, expected);
    assert_eq!(info2.etag, etag);

    let range = c
        .get_range("data/alice/dir a/f+1", 65_536..131_104, None)
        .unwrap();
    assert_eq!(&range[..], &body[65_536..131_104]);
    let range = c
        .get_range("data/alice/dir a/f+1", 299_999..300_000, Some(&etag))
        .unwrap();
    assert_eq!(&range[..], &body[299_999..]);
    // A range read of a replaced object fails its If-Match.
    let etag2 = c
        .put("data/alice/dir a/f+1", b"new", &[], Condition::Always)
        .unwrap();
    assert_ne!(etag, etag2);
    let e = c
        .get_range("data/alice/dir a/f+1", 0..3, Some(&etag))
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    // Past the end: a refusal (416 InvalidRange), not data.
    let e = c
        .get_range("data/alice/dir a/f+1", 10..20, None)
        .unwrap_err();
    assert!(matches!(e, S3Error::Refused { status: 416, .. }), "{e:?}");

    c.delete("data/alice/dir a/f+1").unwrap();
    assert!(matches!(
        c.head("data/alice/dir a/f+1"),
        Err(S3Error::NotFound)
    ));
    assert!(matches!(
        c.get("data/alice/dir a/f+1"),
        Err(S3Error::NotFound)
    ));
    assert!(matches!(
        c.get_range("data/alice/dir a/f+1", 0..1, None),
        Err(S3Error::NotFound)
    ));
    // Deleting what is not there is fine.
    c.delete("data/alice/dir a/f+1").unwrap();
    // Odd characters in keys survive the trip (signing and listing).
    for key in [
        "x/ünï cødé",
        "x/a%2Fb",
        "x/sp ace/+plus=eq&amp;",
        "x/tab\there",
    ] {
        c.put(key, key.as_bytes(), &[], Condition::Always).unwrap();
        assert_eq!(&c.get(key).unwrap().0[..], key.as_bytes(), "{key:?}");
    }
    let listed: Vec<String> = c
        .list("x/", None, None, 1000)
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        listed,
        [
            "x/a%2Fb",
            "x/sp ace/+plus=eq&amp;",
            "x/tab\there",
            "x/ünï cødé"
        ]
    );
}

#[test]
fn a_large_object_is_not_read_whole() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    let body = vec![7u8; 16 * MIB + 1];
    c.put("big", &body, &[], Condition::Always).unwrap();
    let e = c.get("big").unwrap_err();
    assert!(
        matches!(&e, S3Error::Invalid(m) if m.contains("more than")),
        "{e:?}"
    );
    // Ranged reads of it are fine.
    assert_eq!(
        &c.get_range("big", 16 * MIB as u64..16 * MIB as u64 + 1, None)
            .unwrap()[..],
        &[7]
    );
}

#[test]
fn listing_1000_keys_in_pages_and_with_a_delimiter() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    // 1,000 files in 10 directories, written by 8 threads.
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("p/data/u/d{}/f{i:04}", i % 10))
        .collect();
    thread::scope(|scope| {
        for chunk in keys.chunks(125) {
            let c = c.clone();
            scope.spawn(move || {
                for key in chunk {
                    c.put(key, key.as_bytes(), &[], Condition::Always).unwrap();
                }
            });
        }
    });
    c.put("p/data/u/top", b"t", &[], Condition::Always).unwrap();
    c.put("p/other", b"o", &[], Condition::Always).unwrap();

    // Pages of 300: every key once, in order, and the last page says so.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.list("p/data/u/", None, token.as_deref(), 300).unwrap();
        pages += 1;
        assert!(page.objects.len() <= 300);
        assert!(page.common_prefixes.is_empty());
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        assert!(
            page.objects
                .iter()
                .all(|o| o.size > 0 && !o.etag.is_empty())
        );
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(pages < 10, "no end to the listing");
    }
    let mut expected = keys.clone();
    expected.push("p/data/u/top".into());
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);

    // With a delimiter: the ten directories and the one file.
    let page = c.list("p/data/u/", Some("/"), None, 1000).unwrap();
    let dirs: Vec<String> = (0..10).map(|i| format!("p/data/u/d{i}/")).collect();
    assert_eq!(page.common_prefixes, dirs);
    assert_eq!(
        page.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        ["p/data/u/top"]
    );
    assert_eq!(page.next, None);
    // Paged with a delimiter: prefixes are not repeated.
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = c.list("p/data/u/", Some("/"), token.as_deref(), 4).unwrap();
        all.extend(page.common_prefixes);
        all.extend(page.objects.into_iter().map(|o| o.key));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let mut expected = dirs.clone();
    expected.push("p/data/u/top".into());
    all.sort();
    assert_eq!(all, expected);
    // Nothing under an unknown prefix.
    assert_eq!(
        c.list("p/nothing/", Some("/"), None, 1000).unwrap(),
        Default::default()
    );
}

#[test]
fn conditional_puts_create_once_and_replace_only_what_was_read() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    let first = c
        .put("keks/alice", b"one", &[], Condition::IfNoneMatch)
        .unwrap();
    // A second create fails: the first login's key stays.
    let e = c
        .put("keks/alice", b"two", &[], Condition::IfNoneMatch)
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    assert_eq!(&c.get("keks/alice").unwrap().0[..], b"one");
    // If-Match with the etag read: replaced.
    let second = c
        .put("keks/alice", b"two", &[], Condition::IfMatch(first.clone()))
        .unwrap();
    // If-Match with a stale etag: refused, nothing changes.
    let e = c
        .put("keks/alice", b"three", &[], Condition::IfMatch(first))
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    assert_eq!(&c.get("keks/alice").unwrap().0[..], b"two");
    // If-Match on a missing object fails too.
    let e = c
        .put("keks/bob", b"x", &[], Condition::IfMatch(second))
        .unwrap_err();
    assert!(
        matches!(e, S3Error::PreconditionFailed | S3Error::NotFound),
        "{e:?}"
    );
    assert!(matches!(c.head("keks/bob"), Err(S3Error::NotFound)));
}

/// Starts an upload of 3 parts of 5 MiB and a small last one: the upload
/// id, the parts and the whole body.
fn upload_parts(c: &S3Client, key: &str, seed: u8) -> (String, Vec<(u32, String)>, Vec<u8>) {
    let id = c.create_multipart(key, &[("mode", "100600")]).unwrap();
    let mut parts = Vec::new();
    let mut whole = Vec::new();
    for (n, len) in [(1, 5 * MIB), (2, 5 * MIB), (3, 5 * MIB), (4, 1234)] {
        let body = pattern(seed.wrapping_add(n as u8), len);
        parts.push((n, c.upload_part(key, &id, n, &body).unwrap()));
        whole.extend_from_slice(&body);
    }
    (id, parts, whole)
}

#[test]
fn multipart_uploads_complete_abort_and_are_listed() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    let (id, parts, whole) = upload_parts(&c, "data/u/big", 1);
    // Not visible before completion; listed as pending.
    assert!(matches!(c.head("data/u/big"), Err(S3Error::NotFound)));
    let pending = c.list_multipart_uploads("data/").unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0].key.as_str(), pending[0].upload_id.as_str()),
        ("data/u/big", id.as_str())
    );
    assert!(pending[0].initiated > 1_700_000_000, "{pending:?}");
    assert!(c.list_multipart_uploads("keks/").unwrap().is_empty());

    let etag = c
        .complete_multipart("data/u/big", &id, &parts, Condition::Always)
        .unwrap();
    let info = c.head("data/u/big").unwrap();
    assert_eq!(info.size, whole.len() as u64);
    assert_eq!(info.etag, etag);
    assert_eq!(
        info.metadata.get("mode").map(String::as_str),
        Some("100600")
    );
    // Ranges across part edges.
    let edge = 5 * MIB as u64;
    for range in [edge - 10..edge + 10, 3 * edge - 1..3 * edge + 1234, 0..1] {
        let got = c
            .get_range("data/u/big", range.clone(), Some(&etag))
            .unwrap();
        assert_eq!(&got[..], &whole[range.start as usize..range.end as usize]);
    }
    assert!(c.list_multipart_uploads("data/").unwrap().is_empty());

    // An aborted upload leaves the previous version and no pending upload.
    let (id, _, _) = upload_parts(&c, "data/u/big", 9);
    c.abort_multipart("data/u/big", &id).unwrap();
    assert!(c.list_multipart_uploads("").unwrap().is_empty());
    assert_eq!(c.head("data/u/big").unwrap().etag, etag);
    // Aborting again is fine; completing an aborted upload is NotFound.
    c.abort_multipart("data/u/big", &id).unwrap();
    let e = c
        .complete_multipart("data/u/big", &id, &[(1, "\"x\"".into())], Condition::Always)
        .unwrap_err();
    assert!(matches!(e, S3Error::NotFound), "{e:?}");
}

#[test]
fn multipart_completion_honours_if_none_match_and_if_match() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    // Create-only completion: the first one wins, the second fails.
    let (a, a_parts, a_body) = upload_parts(&c, "k", 1);
    let (b, b_parts, _) = upload_parts(&c, "k", 2);
    let first = c
        .complete_multipart("k", &a, &a_parts, Condition::IfNoneMatch)
        .unwrap();
    let e = c
        .complete_multipart("k", &b, &b_parts, Condition::IfNoneMatch)
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    assert_eq!(c.head("k").unwrap().etag, first);
    assert_eq!(&c.get_range("k", 0..100, None).unwrap()[..], &a_body[..100]);
    c.abort_multipart("k", &b).unwrap();

    // Replace-if-unchanged: a stale etag fails, the current one succeeds.
    let (d, d_parts, d_body) = upload_parts(&c, "k", 3);
    let e = c
        .complete_multipart(
            "k",
            &d,
            &d_parts,
            Condition::IfMatch("\"0123456789abcdef0123456789abcdef\"".into()),
        )
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    assert_eq!(c.head("k").unwrap().etag, first);
    let second = c
        .complete_multipart("k", &d, &d_parts, Condition::IfMatch(first))
        .unwrap();
    assert_eq!(c.head("k").unwrap().etag, second);
    assert_eq!(&c.get_range("k", 0..100, None).unwrap()[..], &d_body[..100]);
}

#[test]
fn server_side_copies_of_objects_and_part_ranges() {
    let s3 = SeaweedFs::start();
    let c = s3.client();
    let body = pattern(5, 6 * MIB + 100);
    let src = c
        .put(
            "data/u/src",
            &body,
            &[("mode", "100644")],
            Condition::Always,
        )
        .unwrap();

    // Whole-object copy: metadata copied, or replaced.
    let copied = c
        .copy(
            "data/u/src",
            "data/u/copy one",
            Some(&src),
            None,
            Condition::Always,
        )
        .unwrap();
    let info = c.head("data/u/copy one").unwrap();
    assert_eq!(info.etag, copied);
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(
        info.metadata.get("mode").map(String::as_str),
        Some("100644")
    );
    c.copy(
        "data/u/src",
        "data/u/copy two",
        None,
        Some(&[("mode", "100600"), ("mtime", "5")]),
        Condition::Always,
    )
    .unwrap();
    let info = c.head("data/u/copy two").unwrap();
    assert_eq!(
        info.metadata.get("mode").map(String::as_str),
        Some("100600")
    );
    assert_eq!(info.metadata.get("mtime").map(String::as_str), Some("5"));
    assert_eq!(
        &c.get_range("data/u/copy two", 0..1000, None).unwrap()[..],
        &body[..1000]
    );
    // A copy of a source that changed since it was read fails.
    let e = c
        .copy(
            "data/u/src",
            "data/u/copy three",
            Some("\"0123456789abcdef0123456789abcdef\""),
            None,
            Condition::Always,
        )
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    assert!(matches!(
        c.head("data/u/copy three"),
        Err(S3Error::NotFound)
    ));
    // A copy of a missing source.
    let e = c
        .copy(
            "data/u/none",
            "data/u/copy four",
            None,
            None,
            Condition::Always,
        )
        .unwrap_err();
    assert!(matches!(e, S3Error::NotFound), "{e:?}");

    // Resume: the first 5 MiB + 100 bytes of the source as part 1 (copied
    // server-side), a new tail as part 2.
    let id = c.create_multipart("data/u/resumed", &[]).unwrap();
    let keep = 5 * MIB as u64 + 100;
    let p1 = c
        .upload_part_copy("data/u/resumed", &id, 1, "data/u/src", 0..keep, Some(&src))
        .unwrap();
    let tail = pattern(9, 4321);
    let p2 = c.upload_part("data/u/resumed", &id, 2, &tail).unwrap();
    c.complete_multipart(
        "data/u/resumed",
        &id,
        &[(1, p1), (2, p2)],
        Condition::IfNoneMatch,
    )
    .unwrap();
    let info = c.head("data/u/resumed").unwrap();
    assert_eq!(info.size, keep + tail.len() as u64);
    let edge = c
        .get_range("data/u/resumed", keep - 50..keep + 50, None)
        .unwrap();
    assert_eq!(&edge[..50], &body[keep as usize - 50..keep as usize]);
    assert_eq!(&edge[50..], &tail[..50]);
    // A part copy from a source that changed fails.
    let id = c.create_multipart("data/u/resumed2", &[]).unwrap();
    let e = c
        .upload_part_copy(
            "data/u/resumed2",
            &id,
            1,
            "data/u/src",
            0..keep,
            Some("\"0123456789abcdef0123456789abcdef\""),
        )
        .unwrap_err();
    assert!(matches!(e, S3Error::PreconditionFailed), "{e:?}");
    c.abort_multipart("data/u/resumed2", &id).unwrap();
}

#[test]
fn errors_when_the_store_is_down_and_service_resumes() {
    let mut s3 = SeaweedFs::start();
    let mut o = s3.options();
    o.retry_delays = vec![std::time::Duration::from_millis(10)];
    let c = S3Client::new(o).unwrap();
    c.put("k", b"v", &[], Condition::Always).unwrap();
    s3.stop();
    let e = c.head("k").unwrap_err();
    match &e {
        S3Error::Unavailable(m) => {
            assert!(m.contains("cannot connect (2 attempts)"), "{m}");
            assert!(m.contains(&s3.endpoint), "{m}");
            assert!(!m.contains(super::seaweed::SECRET_ACCESS_KEY), "{m}");
        }
        other => panic!("{other:?}"),
    }
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    s3.restart();
    // A restarted SeaweedFS may answer 500 for a moment: the client's
    // retries cover a short one; service must be back within seconds.
    let resumed = (0..60).find_map(|_| match c.get("k") {
        Ok(got) => Some(got),
        Err(_) => {
            std::thread::sleep(std::time::Duration::from_millis(500));
            None
        }
    });
    assert_eq!(&resumed.expect("service resumed within 30 s").0[..], b"v");
    // Another bucket: the client is per bucket; a missing one is refused.
    let other = s3.create_bucket("second");
    assert!(other.list("", None, None, 10).unwrap().objects.is_empty());
    let mut o = s3.options();
    o.bucket = "missing-bucket".into();
    let e = S3Client::new(o)
        .unwrap()
        .list("", None, None, 10)
        .unwrap_err();
    assert!(
        matches!(&e, S3Error::Refused { status: 404, code, .. } if code == "NoSuchBucket"),
        "{e:?}"
    );
}
