#!/usr/bin/env python3
"""The deploy test's S3 round trip with a real client (boto3, its default checksum and
aws-chunked behaviour), against a deployed gateway.

    s3_check.py put ENDPOINT BUCKET   # create the bucket, upload the objects below
    s3_check.py get ENDPOINT BUCKET   # list them and read each back, whole and in ranges

The access key comes from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (`aether key create`).
The objects' bytes are made from fixed seeds, so `get` (another process, perhaps through
another gateway) knows what every byte must be without a copy kept anywhere. One key is
written twice, so `get` also proves a replaced key reads as its second object. Prints
one line of what it did; exits 1 with the reason on any difference.
"""

import hashlib
import io
import random
import sys

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1 << 20
# key: (seed, size). large.bin goes up in three parts (5 + 5 + 2 MiB).
OBJECTS = {
    "small.txt": (2, 1000),
    "dir/medium.bin": (3, MIB + 3),
    "large.bin": (4, 12 * MIB),
}
REPLACED = ("small.txt", 1, 5000)
PARTS = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)


def content(seed, size):
    return random.Random(seed).randbytes(size)


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2}, connect_timeout=10, read_timeout=60),
    )


def fail(message):
    print(f"s3_check: {message}", file=sys.stderr)
    sys.exit(1)


def put(s3, bucket):
    s3.create_bucket(Bucket=bucket)
    key, seed, size = REPLACED
    s3.put_object(Bucket=bucket, Key=key, Body=content(seed, size))
    total = 0
    for key, (seed, size) in OBJECTS.items():
        body = content(seed, size)
        if size > PARTS.multipart_threshold:
            s3.upload_fileobj(io.BytesIO(body), bucket, key, Config=PARTS)
        else:
            reply = s3.put_object(Bucket=bucket, Key=key, Body=body)
            if reply["ETag"].strip('"') != hashlib.md5(body).hexdigest():
                fail(f"{key}: ETag {reply['ETag']} is not the MD5 of its body")
        total += size
    return f"put {len(OBJECTS)} objects ({total} bytes, one in 3 parts, one key replaced)"


def get(s3, bucket):
    listed = s3.list_objects_v2(Bucket=bucket)
    sizes = {o["Key"]: o["Size"] for o in listed.get("Contents", [])}
    wanted = {key: size for key, (_, size) in OBJECTS.items()}
    if sizes != wanted:
        fail(f"bucket {bucket} lists {sizes}, expected {wanted}")
    total = 0
    for key, (seed, size) in OBJECTS.items():
        body = content(seed, size)
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if got != body:
            fail(f"{key}: read back {len(got)} bytes that differ from the {size} put")
        # A range from each end, and for the multipart object one across its first part's end.
        ranges = [(0, 99), (size - 100, size - 1)]
        if size > PARTS.multipart_threshold:
            ranges.append((5 * MIB - 50, 5 * MIB + 49))
        for first, last in ranges:
            part = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")["Body"].read()
            if part != body[first : last + 1]:
                fail(f"{key}: bytes {first}-{last} read back wrong")
        total += size
    return f"read {len(OBJECTS)} objects back ({total} bytes, whole and in ranges)"


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("put", "get"):
        fail(__doc__)
    action, endpoint, bucket = sys.argv[1:]
    s3 = client(endpoint)
    said = put(s3, bucket) if action == "put" else get(s3, bucket)
    print(f"{said} through {endpoint}, boto3 {boto3.__version__}")


if __name__ == "__main__":
    main()
