"""Uploads SIZE bytes through the S3 gateway as a boto3 multipart upload and downloads
them again, both streamed: the bytes are made as they are sent (every MiB distinct, so
parts out of order would show) and hashed as they come back, never held whole.

Run by tests/it/s3clients.rs, which samples the gateway's memory meanwhile, and by
bench/s3.sh. Arguments: ENDPOINT KEY SECRET SIZE_BYTES. Prints one JSON line with the
seconds each way and the MD5s.
"""

import hashlib
import json
import random
import struct
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1 << 20
BLOCK = random.Random(1).randbytes(MIB)


class Generated:
    """A read-only file of `size` bytes: MiB number i is i (8 bytes) then BLOCK's rest."""

    def __init__(self, size):
        self.size, self.offset = size, 0
        self.md5 = hashlib.md5()

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size - self.offset
        n = min(n, self.size - self.offset)
        out = bytearray()
        while len(out) < n:
            index, within = divmod(self.offset, MIB)
            piece = (struct.pack("<Q", index) + BLOCK[8:])[within : within + n - len(out)]
            out += piece
            self.offset += len(piece)
        self.md5.update(out)
        return bytes(out)


def main():
    endpoint, key, secret, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                      aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))
    bucket = "gib-bucket"
    s3.create_bucket(Bucket=bucket)
    source = Generated(size)
    config = TransferConfig(multipart_threshold=16 * MIB, multipart_chunksize=64 * MIB, max_concurrency=2)
    started = time.monotonic()
    s3.upload_fileobj(source, bucket, "gib.bin", Config=config)
    up = time.monotonic() - started
    head = s3.head_object(Bucket=bucket, Key="gib.bin")
    assert head["ContentLength"] == size, head
    parts = head["ETag"].strip('"').rsplit("-", 1)[-1]

    started = time.monotonic()
    body = s3.get_object(Bucket=bucket, Key="gib.bin")["Body"]
    back, total = hashlib.md5(), 0
    while chunk := body.read(MIB):
        back.update(chunk)
        total += len(chunk)
    down = time.monotonic() - started
    assert total == size, f"{total} bytes came back, {size} went up"
    assert back.hexdigest() == source.md5.hexdigest(), "the object came back different"
    s3.delete_object(Bucket=bucket, Key="gib.bin")
    print(json.dumps({"bytes": size, "parts": int(parts), "upload_secs": round(up, 2), "download_secs": round(down, 2),
                      "md5": back.hexdigest()}))


if __name__ == "__main__":
    main()
