"""The S3 gateway through the MinIO Python SDK: buckets, put/get/stat/list/remove, a
put_object large enough to go up in parts (of known and of unknown length), ranged
reads, and a presigned GET URL fetched with urllib.

Run by tests/it/s3clients.rs against `aether dev`. Environment: S3_ENDPOINT, S3_KEY,
S3_SECRET.
"""

import hashlib
import io
import os
import unittest
import urllib.error
import urllib.request
from datetime import timedelta

from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

ENDPOINT = os.environ["S3_ENDPOINT"]
HOST = ENDPOINT.split("://", 1)[1]
BUCKET = "minio-sdk"
PART = 5 << 20


def client():
    return Minio(HOST, access_key=os.environ["S3_KEY"], secret_key=os.environ["S3_SECRET"], secure=False, region="us-east-1")


def body_of(response):
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


class MinioSdk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        if not cls.c.bucket_exists(BUCKET):
            cls.c.make_bucket(BUCKET)

    def test_bucket_exists_and_is_listed(self):
        self.assertTrue(self.c.bucket_exists(BUCKET))
        self.assertFalse(self.c.bucket_exists("minio-sdk-absent"))
        self.assertIn(BUCKET, [b.name for b in self.c.list_buckets()])

    def test_small_put_get_stat_remove(self):
        body = b"hello from the minio sdk\n"
        result = self.c.put_object(BUCKET, "small.txt", io.BytesIO(body), len(body), content_type="text/plain",
                                   metadata={"x-amz-meta-colour": "blue"})
        self.assertEqual(result.etag, md5_hex(body))
        stat = self.c.stat_object(BUCKET, "small.txt")
        self.assertEqual((stat.size, stat.content_type, stat.etag), (len(body), "text/plain", md5_hex(body)))
        self.assertEqual(stat.metadata.get("x-amz-meta-colour"), "blue")
        self.assertEqual(body_of(self.c.get_object(BUCKET, "small.txt")), body)
        self.c.remove_object(BUCKET, "small.txt")
        with self.assertRaises(S3Error) as raised:
            self.c.stat_object(BUCKET, "small.txt")
        self.assertEqual(raised.exception.code, "NoSuchKey")

    def test_multipart_put_object_round_trips(self):
        # 12 MiB + 1 in 5 MiB parts: three parts, the last a single byte over 2 MiB.
        body = os.urandom((12 << 20) + 1)
        for key, length in (("parts/known.bin", len(body)), ("parts/streamed.bin", -1)):
            result = self.c.put_object(BUCKET, key, io.BytesIO(body), length, part_size=PART)
            self.assertTrue(result.etag.endswith("-3"), f"{key}: not a 3-part upload: {result.etag}")
            self.assertEqual(self.c.stat_object(BUCKET, key).size, len(body))
            got = body_of(self.c.get_object(BUCKET, key))
            self.assertEqual(md5_hex(got), md5_hex(body), f"{key} came back different")
            # A range across the first part boundary.
            got = body_of(self.c.get_object(BUCKET, key, offset=PART - 10, length=20))
            self.assertEqual(got, body[PART - 10 : PART + 10])

    def test_list_recursive_and_by_prefix(self):
        for key in ("list/a.txt", "list/b/c.txt", "list/b/d.txt", "other.txt"):
            self.c.put_object(BUCKET, key, io.BytesIO(key.encode()), len(key))
        flat = [o.object_name for o in self.c.list_objects(BUCKET, prefix="list/")]
        self.assertEqual(flat, ["list/a.txt", "list/b/"])
        deep = [o.object_name for o in self.c.list_objects(BUCKET, prefix="list/", recursive=True)]
        self.assertEqual(deep, ["list/a.txt", "list/b/c.txt", "list/b/d.txt"])
        after = [o.object_name for o in self.c.list_objects(BUCKET, prefix="list/", recursive=True, start_after="list/b/c.txt")]
        self.assertEqual(after, ["list/b/d.txt"])
        errors = list(self.c.remove_objects(BUCKET, [DeleteObject(k) for k in deep]))
        self.assertEqual(errors, [])
        self.assertEqual(list(self.c.list_objects(BUCKET, prefix="list/", recursive=True)), [])

    def test_presigned_get_url_fetched_with_urllib(self):
        body = os.urandom(70_000)
        self.c.put_object(BUCKET, "presigned.bin", io.BytesIO(body), len(body))
        url = self.c.presigned_get_object(BUCKET, "presigned.bin", expires=timedelta(minutes=5))
        with urllib.request.urlopen(url, timeout=30) as response:
            self.assertEqual(response.read(), body)
        # A tampered signature is refused.
        bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        with self.assertRaises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(bad, timeout=30)
        self.assertEqual(raised.exception.code, 403)


class ZEmptyBucket(unittest.TestCase):
    """Runs last (unittest sorts classes by name): the bucket empties and goes."""

    def test_remove_everything_then_the_bucket(self):
        c = client()
        keys = [o.object_name for o in c.list_objects(BUCKET, recursive=True)]
        self.assertEqual(list(c.remove_objects(BUCKET, [DeleteObject(k) for k in keys])), [])
        c.remove_bucket(BUCKET)
        self.assertFalse(c.bucket_exists(BUCKET))


if __name__ == "__main__":
    unittest.main(verbosity=2)
