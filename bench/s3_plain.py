#!/usr/bin/env python3
"""The plain S3 client of bench/s3-compare.sh: boto3's managed transfers
(upload_file / download_file, multipart, PART_MIB parts) against the same
bucket Dropzone stores in, so that Dropzone's figures can be set against
what an ordinary S3 client gets from the same store on the same machine.

    s3_plain.py wait SECONDS              until the bucket answers (HeadBucket)
    s3_plain.py put KEY FILE              one upload_file; prints its seconds
    s3_plain.py get KEY FILE              one download_file; prints its seconds
    s3_plain.py par-put KEY=FILE...       one process per pair, all at once;
    s3_plain.py par-get KEY=FILE...       prints the seconds until the last ended
    s3_plain.py rm KEY...                 deletes objects
    s3_plain.py du PREFIX                 prints "OBJECTS BYTES" under PREFIX
    s3_plain.py uploads PREFIX            prints the incomplete multipart uploads
    s3_plain.py list PREFIX               lists PREFIX (ListObjectsV2 pages, with
                                          delimiter /); prints "SECONDS OBJECTS",
                                          keys ending in / left out

Settings come from the environment: S3_ENDPOINT, S3_BUCKET, S3_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, PART_MIB (default 8),
PLAIN_CONCURRENCY (parts in flight per transfer, default boto3's 10).

The seconds printed run from just before the client is made (its first
request connects, as each timed sftp command connects and authenticates)
to the end of the transfer; Python's start-up and the import of boto3,
which sftp has no counterpart of, are left out.
"""

import multiprocessing
import os
import sys
import time

import boto3
import botocore.config
from boto3.s3.transfer import TransferConfig

MIB = 1 << 20


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            # boto3 >= 1.36 adds CRC32 checksums to every upload by default;
            # a plain client as S3 has always known sends none (nor does
            # Dropzone), so that neither side pays for extra hashing.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
        ),
    )


def transfer_config():
    part = int(os.environ.get("PART_MIB", "8")) * MIB
    return TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=int(os.environ.get("PLAIN_CONCURRENCY", "10")),
        use_threads=True,
    )


def bucket():
    return os.environ["S3_BUCKET"]


def one(direction, key, path):
    s3 = client()
    if direction == "put":
        s3.upload_file(path, bucket(), key, Config=transfer_config())
    else:
        s3.download_file(bucket(), key, path, Config=transfer_config())


def timed_one(direction, key, path):
    t0 = time.monotonic()
    one(direction, key, path)
    return time.monotonic() - t0


def worker(direction, key, path, start):
    # Every worker waits at the barrier, so that process start-up is not
    # timed and all transfers begin together.
    start.wait()
    one(direction, key, path)


def timed_parallel(direction, pairs):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(len(pairs) + 1)
    procs = []
    for pair in pairs:
        key, _, path = pair.partition("=")
        if not key or not path:
            sys.exit(f"s3_plain.py: expected KEY=FILE, got {pair!r}")
        p = ctx.Process(target=worker, args=(direction, key, path, start))
        p.start()
        procs.append(p)
    start.wait()
    t0 = time.monotonic()
    failed = 0
    for p in procs:
        p.join()
        failed += p.exitcode != 0
    t1 = time.monotonic()
    if failed:
        sys.exit(f"s3_plain.py: {failed} of {len(pairs)} parallel {direction}s failed")
    return t1 - t0


def wait(seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            client().head_bucket(Bucket=bucket())
            return
        except Exception as e:  # not up yet: connection refused, 5xx, ...
            last = e
            time.sleep(0.2)
    sys.exit(f"s3_plain.py: bucket {bucket()} did not answer within {seconds} s: {last}")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "wait" and len(args) == 1:
        wait(float(args[0]))
    elif cmd in ("put", "get") and len(args) == 2:
        print(f"{timed_one(cmd, args[0], args[1]):.6f}")
    elif cmd in ("par-put", "par-get") and args:
        print(f"{timed_parallel(cmd[4:], args):.6f}")
    elif cmd == "rm" and args:
        s3 = client()
        for key in args:
            s3.delete_object(Bucket=bucket(), Key=key)
    elif cmd == "du" and len(args) == 1:
        n = size = 0
        pages = client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket(), Prefix=args[0]):
            for o in page.get("Contents", []):
                n += 1
                size += o["Size"]
        print(n, size)
    elif cmd == "list" and len(args) == 1:
        t0 = time.monotonic()
        s3 = client()
        n = 0
        pages = s3.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket(), Prefix=args[0], Delimiter="/"):
            n += sum(not o["Key"].endswith("/") for o in page.get("Contents", []))
        print(f"{time.monotonic() - t0:.6f} {n}")
    elif cmd == "uploads" and len(args) == 1:
        r = client().list_multipart_uploads(Bucket=bucket(), Prefix=args[0])
        for u in r.get("Uploads", []):
            print(u["Key"], u["UploadId"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
