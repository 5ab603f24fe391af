"""The S3 gateway through boto3 at its current version, with its default checksum
behaviour, plus raw SigV4 requests for what boto3 does not send over plain HTTP
(signed aws-chunked bodies, clock skew).

Run by tests/it/s3.rs against real processes. Environment: S3_ENDPOINT, S3_KEY,
S3_SECRET (a key that may create buckets), S3_KEY2, S3_SECRET2 (a key with no grants).
"""

import datetime
import hashlib
import hmac
import http.client
import os
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
import uuid

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["S3_ENDPOINT"]
KEY, SECRET = os.environ["S3_KEY"], os.environ["S3_SECRET"]
KEY2, SECRET2 = os.environ["S3_KEY2"], os.environ["S3_SECRET2"]
REGION = "us-east-1"


def client(key=KEY, secret=SECRET):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def error_of(call):
    """The (code, HTTP status) of the ClientError `call` raises."""
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("the call succeeded")


def new_bucket(s3, stem):
    name = f"{stem}-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def signed_request(method, path, body=b"", headers=None, payload_hash=None, amz_date=None, chunk=None, trailer=None, forge_trailer=None):
    """A raw SigV4 request (header auth), written from the AWS specification; `chunk`
    sends `body` as STREAMING-AWS4-HMAC-SHA256-PAYLOAD in chunks of that size, and with
    `trailer` ({name: value}) as STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, the trailer
    signed; `forge_trailer` changes the trailer after it was signed."""
    url = urllib.parse.urlparse(ENDPOINT)
    amz_date = amz_date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    headers["host"] = url.netloc
    headers["x-amz-date"] = amz_date
    if chunk:
        payload_hash = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer is not None else "")
        if trailer:
            headers["x-amz-trailer"] = ",".join(sorted(trailer))
        headers["content-encoding"] = "aws-chunked"
        headers["x-amz-decoded-content-length"] = str(len(body))
    payload_hash = payload_hash or hashlib.sha256(body).hexdigest()
    headers["x-amz-content-sha256"] = payload_hash
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    signed = sorted(headers)
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(path, safe="/~"),
            "",
            "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
            ";".join(signed),
            payload_hash,
        ]
    )
    digest = lambda key, msg: hmac.new(key, msg.encode(), hashlib.sha256).digest()
    signing_key = digest(digest(digest(digest(("AWS4" + SECRET).encode(), amz_date[:8]), REGION), "s3"), "aws4_request")
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    if chunk:
        framed, previous = b"", signature
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] + [b""]
        for piece in pieces:
            to_sign = "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    amz_date,
                    scope,
                    previous,
                    hashlib.sha256(b"").hexdigest(),
                    hashlib.sha256(piece).hexdigest(),
                ]
            )
            previous = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
            framed += b"%x;chunk-signature=%s\r\n%s\r\n" % (len(piece), previous.encode(), piece)
        if trailer is not None:
            # The final chunk's CRLF is the trailer's start: its lines, then its signature.
            framed = framed[:-2]
            canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailer.items()))
            to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous, hashlib.sha256(canonical.encode()).hexdigest()])
            trailer_signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
            for name, value in sorted((forge_trailer or trailer).items()):
                framed += f"{name}:{value}\r\n".encode()
            framed += f"x-amz-trailer-signature:{trailer_signature}\r\n\r\n".encode()
        body = framed
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    connection.request(method, path, body=body, headers=headers)
    try:
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _crc_table(poly):
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C, _CRC64NVME = _crc_table(0x82F63B78), _crc_table(0x9A6C9329AC4BC9B5)


def _reflected_crc(table, width, data):
    mask = (1 << width) - 1
    crc = mask
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ mask


def checksum_of(algorithm, data):
    """S3's base64 checksum of `data`, computed here from the algorithms' definitions (CRC32C
    and CRC64NVME by table, as boto3 computes them only with the CRT installed)."""
    import base64
    import zlib

    raw = {
        "CRC32": lambda: zlib.crc32(data).to_bytes(4, "big"),
        "CRC32C": lambda: _reflected_crc(_CRC32C, 32, data).to_bytes(4, "big"),
        "CRC64NVME": lambda: _reflected_crc(_CRC64NVME, 64, data).to_bytes(8, "big"),
        "SHA1": lambda: hashlib.sha1(data).digest(),
        "SHA256": lambda: hashlib.sha256(data).digest(),
    }[algorithm]()
    return base64.b64encode(raw).decode()


def composite_of(algorithm, parts):
    """A multipart object's COMPOSITE checksum: the checksum of its parts' raw checksums, -N."""
    import base64

    joined = b"".join(base64.b64decode(checksum_of(algorithm, part)) for part in parts)
    return f"{checksum_of(algorithm, joined)}-{len(parts)}"


class Buckets(unittest.TestCase):
    def test_create_list_head_locate_delete(self):
        s3 = client()
        name = new_bucket(s3, "buckets")
        self.assertEqual(error_of(lambda: s3.create_bucket(Bucket=name)), ("BucketAlreadyOwnedByYou", 409))
        self.assertEqual(error_of(lambda: client(KEY2, SECRET2).create_bucket(Bucket=name)), ("BucketAlreadyExists", 409))
        self.assertEqual(error_of(lambda: s3.create_bucket(Bucket="ab")), ("InvalidBucketName", 400))
        self.assertIn(name, [b["Name"] for b in s3.list_buckets()["Buckets"]])
        s3.head_bucket(Bucket=name)
        self.assertIsNone(s3.get_bucket_location(Bucket=name).get("LocationConstraint"))
        s3.put_object(Bucket=name, Key="k", Body=b"x")
        self.assertEqual(error_of(lambda: s3.delete_bucket(Bucket=name)), ("BucketNotEmpty", 409))
        s3.delete_object(Bucket=name, Key="k")
        s3.delete_bucket(Bucket=name)
        self.assertEqual(error_of(lambda: s3.head_bucket(Bucket=name)), ("404", 404))
        self.assertEqual(error_of(lambda: s3.list_objects_v2(Bucket=name)), ("NoSuchBucket", 404))


class Objects(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "objects")

    def test_small_put_get_head_overwrite_delete(self):
        s3, b = self.s3, self.bucket
        body = b"hello, aether"
        put = s3.put_object(Bucket=b, Key="dir/hello.txt", Body=body, ContentType="text/plain", Metadata={"colour": "blue"})
        self.assertEqual(put["ETag"], '"%s"' % hashlib.md5(body).hexdigest())
        got = s3.get_object(Bucket=b, Key="dir/hello.txt")
        self.assertEqual(got["Body"].read(), body)
        self.assertEqual(got["ContentType"], "text/plain")
        self.assertEqual(got["Metadata"], {"colour": "blue"})
        head = s3.head_object(Bucket=b, Key="dir/hello.txt")
        self.assertEqual(head["ContentLength"], len(body))
        self.assertEqual(head["ETag"], put["ETag"])
        self.assertIsNotNone(head["LastModified"])
        s3.put_object(Bucket=b, Key="dir/hello.txt", Body=b"replaced")
        self.assertEqual(s3.get_object(Bucket=b, Key="dir/hello.txt")["Body"].read(), b"replaced")
        s3.put_object(Bucket=b, Key="empty", Body=b"")
        self.assertEqual(s3.get_object(Bucket=b, Key="empty")["Body"].read(), b"")
        self.assertEqual(s3.head_object(Bucket=b, Key="empty")["ContentLength"], 0)
        s3.delete_object(Bucket=b, Key="dir/hello.txt")
        s3.delete_object(Bucket=b, Key="dir/hello.txt")  # absent: still 204, as in S3
        self.assertEqual(error_of(lambda: s3.get_object(Bucket=b, Key="dir/hello.txt")), ("NoSuchKey", 404))
        self.assertEqual(error_of(lambda: s3.head_object(Bucket=b, Key="dir/hello.txt")), ("404", 404))

    def test_delete_objects_in_a_batch(self):
        s3, b = self.s3, self.bucket
        for key in ["batch/1", "batch/2", "batch/a & b"]:
            s3.put_object(Bucket=b, Key=key, Body=b"x")
        objects = [{"Key": k} for k in ["batch/1", "batch/2", "batch/a & b", "batch/never"]]
        answer = s3.delete_objects(Bucket=b, Delete={"Objects": objects})
        self.assertEqual(sorted(d["Key"] for d in answer["Deleted"]), sorted(o["Key"] for o in objects))
        self.assertNotIn("Errors", answer)
        self.assertEqual(s3.list_objects_v2(Bucket=b, Prefix="batch/")["KeyCount"], 0)
        s3.put_object(Bucket=b, Key="batch/3", Body=b"x")
        quiet = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "batch/3"}], "Quiet": True})
        self.assertNotIn("Deleted", quiet)
        self.assertEqual(s3.list_objects_v2(Bucket=b, Prefix="batch/")["KeyCount"], 0)

    def test_copy_object_copies_or_replaces_metadata(self):
        s3, b = self.s3, self.bucket
        body = os.urandom(2 << 20)
        etag = s3.put_object(Bucket=b, Key="src/a b", Body=body, ContentType="text/x-src", Metadata={"m": "1"})["ETag"]
        other = new_bucket(s3, "copy-target")
        copied = s3.copy_object(Bucket=other, Key="copy", CopySource={"Bucket": b, "Key": "src/a b"})
        self.assertEqual(copied["CopyObjectResult"]["ETag"], etag)
        got = s3.get_object(Bucket=other, Key="copy")
        self.assertEqual(got["Body"].read(), body)
        self.assertEqual((got["ContentType"], got["Metadata"]), ("text/x-src", {"m": "1"}))
        s3.copy_object(
            Bucket=b, Key="src/a b", CopySource=f"{b}/src/a b", MetadataDirective="REPLACE", ContentType="text/new", Metadata={"m": "2"}
        )
        head = s3.head_object(Bucket=b, Key="src/a b")
        self.assertEqual((head["ContentType"], head["Metadata"], head["ETag"]), ("text/new", {"m": "2"}, etag))
        self.assertEqual(error_of(lambda: s3.copy_object(Bucket=b, Key="src/a b", CopySource=f"{b}/src/a b")), ("InvalidRequest", 400))
        self.assertEqual(error_of(lambda: s3.copy_object(Bucket=b, Key="x", CopySource=f"{b}/absent")), ("NoSuchKey", 404))
        # Each key has bytes of its own: deleting the source leaves the copy whole.
        s3.delete_object(Bucket=b, Key="src/a b")
        self.assertEqual(s3.get_object(Bucket=other, Key="copy")["Body"].read(), body)

    def test_keys_with_odd_characters(self):
        s3, b = self.s3, self.bucket
        for key in ["a b/c+d=e&f", "ünïcødé/ключ", "x%2Fy", "tilde~and*star"]:
            s3.put_object(Bucket=b, Key=key, Body=key.encode())
            self.assertEqual(s3.get_object(Bucket=b, Key=key)["Body"].read(), key.encode(), key)
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]]
        for key in ["a b/c+d=e&f", "ünïcødé/ключ", "x%2Fy", "tilde~and*star"]:
            self.assertIn(key, listed)

    def test_20_mib_streams_both_ways(self):
        s3, b = self.s3, self.bucket
        body = os.urandom(20 << 20)
        put = s3.put_object(Bucket=b, Key="big", Body=body)
        self.assertEqual(put["ETag"], '"%s"' % hashlib.md5(body).hexdigest())
        got = s3.get_object(Bucket=b, Key="big")["Body"].read()
        self.assertEqual(len(got), len(body))
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(body).digest())

    def test_ranges(self):
        s3, b = self.s3, self.bucket
        body = bytes(range(50))
        s3.put_object(Bucket=b, Key="ranged", Body=body)
        part = s3.get_object(Bucket=b, Key="ranged", Range="bytes=10-19")
        self.assertEqual(part["Body"].read(), body[10:20])
        self.assertEqual(part["ContentRange"], "bytes 10-19/50")
        self.assertEqual(s3.get_object(Bucket=b, Key="ranged", Range="bytes=-5")["Body"].read(), body[-5:])
        self.assertEqual(s3.get_object(Bucket=b, Key="ranged", Range="bytes=45-")["Body"].read(), body[45:])
        self.assertEqual(error_of(lambda: s3.get_object(Bucket=b, Key="ranged", Range="bytes=50-")), ("InvalidRange", 416))

    def test_aws_chunked_with_crc32_trailer_as_sdks_send_it_over_https(self):
        # boto3 sends STREAMING-UNSIGNED-PAYLOAD-TRAILER only over TLS; this switches
        # its own checksum context to the trailer, so its real code frames the body.
        s3 = client()
        sent = {}

        def use_trailer(params, **kwargs):
            algorithm = params["context"].get("checksum", {}).get("request_algorithm")
            if isinstance(algorithm, dict):
                algorithm["in"] = "trailer"

        def record(request, **kwargs):
            sent.update({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

        s3.meta.events.register("before-call.s3.PutObject", use_trailer)
        s3.meta.events.register("before-send.s3.PutObject", record)
        body = os.urandom(3 << 20) + b"tail"
        put = s3.put_object(Bucket=self.bucket, Key="trailer", Body=body)
        self.assertEqual(sent["x-amz-content-sha256"], "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        self.assertEqual(sent["x-amz-trailer"], "x-amz-checksum-crc32")
        self.assertEqual(put["ETag"], '"%s"' % hashlib.md5(body).hexdigest())
        got = self.s3.get_object(Bucket=self.bucket, Key="trailer")["Body"].read()
        self.assertEqual(got, body, "the aws-chunked framing reached the stored bytes")

    def test_signed_aws_chunked_and_a_forged_chunk(self):
        body = os.urandom(200_000)
        status, _ = signed_request("PUT", f"/{self.bucket}/chunked", body=body, chunk=65536)
        self.assertEqual(status, 200)
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="chunked")["Body"].read(), body)

        real_urandom = body
        forged = bytearray(real_urandom)
        # Sign one body, send another: the gateway must refuse and store nothing.
        original = http.client.HTTPConnection.request

        def tamper(conn, method, url, body=None, headers=None, **kw):
            body = body.replace(real_urandom[70_000:70_010], b"X" * 10, 1)
            return original(conn, method, url, body=body, headers=headers, **kw)

        http.client.HTTPConnection.request = tamper
        try:
            status, text = signed_request("PUT", f"/{self.bucket}/forged", body=bytes(forged), chunk=65536)
        finally:
            http.client.HTTPConnection.request = original
        self.assertEqual(status, 403, text)
        self.assertIn(b"SignatureDoesNotMatch", text)
        self.assertEqual(error_of(lambda: self.s3.head_object(Bucket=self.bucket, Key="forged")), ("404", 404))

    def test_signed_aws_chunked_with_a_signed_trailer(self):
        import base64
        import zlib

        crc32 = lambda data: base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        body = os.urandom(150_000)
        trailer = {"x-amz-checksum-crc32": crc32(body)}
        status, text = signed_request("PUT", f"/{self.bucket}/signed-trailer", body=body, chunk=65536, trailer=trailer)
        self.assertEqual(status, 200, text)
        got = self.s3.get_object(Bucket=self.bucket, Key="signed-trailer")["Body"].read()
        self.assertEqual(got, body, "the aws-chunked framing or trailer reached the stored bytes")
        # A trailer changed after signing, a checksum that does not match (signed): refused,
        # nothing stored.
        forged = {"x-amz-checksum-crc32": crc32(b"other")}
        status, text = signed_request("PUT", f"/{self.bucket}/forged-trailer", body=body, chunk=65536, trailer=trailer, forge_trailer=forged)
        self.assertEqual(status, 403, text)
        self.assertIn(b"SignatureDoesNotMatch", text)
        status, text = signed_request("PUT", f"/{self.bucket}/forged-trailer", body=body, chunk=65536, trailer=forged)
        self.assertEqual(status, 400, text)
        self.assertIn(b"BadDigest", text)
        self.assertEqual(error_of(lambda: self.s3.head_object(Bucket=self.bucket, Key="forged-trailer")), ("404", 404))
        # An empty body with a trailer.
        status, text = signed_request("PUT", f"/{self.bucket}/empty-trailer", body=b"", chunk=65536, trailer={"x-amz-checksum-crc32": crc32(b"")})
        self.assertEqual(status, 200, text)
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="empty-trailer")["Body"].read(), b"")

    def test_a_body_that_does_not_match_its_signed_hash_is_refused(self):
        status, text = signed_request(
            "PUT", f"/{self.bucket}/mismatch", body=b"the real body", payload_hash=hashlib.sha256(b"other").hexdigest()
        )
        self.assertEqual(status, 400, text)
        self.assertIn(b"XAmzContentSHA256Mismatch", text)
        self.assertEqual(error_of(lambda: self.s3.head_object(Bucket=self.bucket, Key="mismatch")), ("404", 404))

    def test_presigned_urls(self):
        url = self.s3.generate_presigned_url("put_object", Params={"Bucket": self.bucket, "Key": "presigned"}, ExpiresIn=300)
        request = urllib.request.Request(url, data=b"presigned body", method="PUT")
        self.assertEqual(urllib.request.urlopen(request).status, 200)
        url = self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "presigned"}, ExpiresIn=300)
        self.assertEqual(urllib.request.urlopen(url).read(), b"presigned body")
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
        self.assertEqual(refused.exception.code, 403)
        expired = self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "presigned"}, ExpiresIn=1)
        time.sleep(2.5)  # the URL's own lifetime, not synchronisation
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(expired)
        self.assertEqual(refused.exception.code, 403)
        self.assertIn(b"expired", refused.exception.read())

    def test_response_header_overrides(self):
        self.s3.put_object(Bucket=self.bucket, Key="report.csv", Body=b"a,b\n", ContentType="text/csv")
        got = self.s3.get_object(
            Bucket=self.bucket,
            Key="report.csv",
            ResponseContentType="application/octet-stream",
            ResponseContentDisposition='attachment; filename="r.csv"',
            ResponseCacheControl="no-cache",
        )
        self.assertEqual(got["ContentType"], "application/octet-stream")
        self.assertEqual(got["ContentDisposition"], 'attachment; filename="r.csv"')
        self.assertEqual(got["CacheControl"], "no-cache")
        self.assertEqual(got["Body"].read(), b"a,b\n")


class Multipart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "multipart")

    def test_upload_file_in_parts_and_read_it_back_whole_and_in_ranges(self):
        from boto3.s3.transfer import TransferConfig

        body = os.urandom((12 << 20) + 12345)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"aether-mp-{uuid.uuid4().hex}")
        with open(path, "wb") as f:
            f.write(body)
        try:
            config = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=3)
            self.s3.upload_file(path, self.bucket, "parts/big", Config=config, ExtraArgs={"ContentType": "x/mp", "Metadata": {"k": "v"}})
        finally:
            os.remove(path)
        head = self.s3.head_object(Bucket=self.bucket, Key="parts/big")
        self.assertEqual(head["ContentLength"], len(body))
        self.assertTrue(head["ETag"].endswith('-3"'), head["ETag"])
        digests = b"".join(hashlib.md5(body[i : i + (5 << 20)]).digest() for i in range(0, len(body), 5 << 20))
        self.assertEqual(head["ETag"], '"%s-3"' % hashlib.md5(digests).hexdigest())
        self.assertEqual((head["ContentType"], head["Metadata"]), ("x/mp", {"k": "v"}))
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="parts/big")["Body"].read(), body)
        across = (5 << 20) - 10, (10 << 20) + 10  # the end of part 1, all of part 2, the start of part 3
        got = self.s3.get_object(Bucket=self.bucket, Key="parts/big", Range="bytes=%d-%d" % across)["Body"].read()
        self.assertEqual(got, body[across[0] : across[1] + 1])
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="parts/big", Range="bytes=-100")["Body"].read(), body[-100:])
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="parts/")["Contents"]
        self.assertEqual([(o["Key"], o["Size"]) for o in listed], [("parts/big", len(body))])
        # One part at a time, as parallel downloaders ask (GetObject and HeadObject with PartNumber).
        for number, start, end in [(1, 0, 5 << 20), (2, 5 << 20, 10 << 20), (3, 10 << 20, len(body))]:
            part = self.s3.get_object(Bucket=self.bucket, Key="parts/big", PartNumber=number)
            self.assertEqual(part["Body"].read(), body[start:end])
            self.assertEqual(part["ResponseMetadata"]["HTTPStatusCode"], 206)
            self.assertEqual(part["PartsCount"], 3)
            self.assertEqual(part["ContentRange"], "bytes %d-%d/%d" % (start, end - 1, len(body)))
            head = self.s3.head_object(Bucket=self.bucket, Key="parts/big", PartNumber=number)
            self.assertEqual((head["ContentLength"], head["PartsCount"]), (end - start, 3))
        self.assertEqual(error_of(lambda: self.s3.get_object(Bucket=self.bucket, Key="parts/big", PartNumber=4)), ("InvalidPartNumber", 416))
        self.assertEqual(error_of(lambda: self.s3.get_object(Bucket=self.bucket, Key="parts/big", PartNumber=1, Range="bytes=0-1")), ("InvalidRequest", 400))
        # An object stored in one piece is its own part 1.
        self.s3.put_object(Bucket=self.bucket, Key="parts/one", Body=b"single")
        whole = self.s3.get_object(Bucket=self.bucket, Key="parts/one", PartNumber=1)
        self.assertEqual((whole["Body"].read(), whole.get("PartsCount")), (b"single", None))
        self.assertEqual(error_of(lambda: self.s3.get_object(Bucket=self.bucket, Key="parts/one", PartNumber=2)), ("InvalidPartNumber", 416))

    def test_part_rules_abort_and_replacement(self):
        s3, b = self.s3, self.bucket
        upload = s3.create_multipart_upload(Bucket=b, Key="rules")["UploadId"]
        one = s3.upload_part(Bucket=b, Key="rules", UploadId=upload, PartNumber=1, Body=b"small")["ETag"]
        two = s3.upload_part(Bucket=b, Key="rules", UploadId=upload, PartNumber=2, Body=b"tail")["ETag"]
        parts = lambda *p: {"Parts": [{"PartNumber": n, "ETag": e} for n, e in p]}
        complete = lambda p: s3.complete_multipart_upload(Bucket=b, Key="rules", UploadId=upload, MultipartUpload=p)
        self.assertEqual(error_of(lambda: complete(parts((1, one), (2, two)))), ("EntityTooSmall", 400))
        self.assertEqual(error_of(lambda: complete(parts((2, two), (1, one)))), ("InvalidPartOrder", 400))
        self.assertEqual(error_of(lambda: complete(parts((1, two)))), ("InvalidPart", 400))
        # A part sent again replaces the one before.
        big = os.urandom(5 << 20)
        one = s3.upload_part(Bucket=b, Key="rules", UploadId=upload, PartNumber=1, Body=big)["ETag"]
        complete(parts((1, one), (2, two)))
        self.assertEqual(s3.get_object(Bucket=b, Key="rules")["Body"].read(), big + b"tail")
        self.assertEqual(error_of(lambda: complete(parts((1, one)))), ("NoSuchUpload", 404))
        # Overwritten by a single PUT, the parts go.
        s3.put_object(Bucket=b, Key="rules", Body=b"single")
        self.assertEqual(s3.get_object(Bucket=b, Key="rules")["Body"].read(), b"single")
        aborted = s3.create_multipart_upload(Bucket=b, Key="aborted")["UploadId"]
        s3.upload_part(Bucket=b, Key="aborted", UploadId=aborted, PartNumber=1, Body=b"x")
        s3.abort_multipart_upload(Bucket=b, Key="aborted", UploadId=aborted)
        self.assertEqual(
            error_of(lambda: s3.upload_part(Bucket=b, Key="aborted", UploadId=aborted, PartNumber=2, Body=b"y")), ("NoSuchUpload", 404)
        )
        self.assertEqual(error_of(lambda: s3.head_object(Bucket=b, Key="aborted")), ("404", 404))


class MultipartListings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "mp-lists")

    def test_list_parts_in_pages(self):
        s3, b = self.s3, self.bucket
        upload = s3.create_multipart_upload(Bucket=b, Key="listed")["UploadId"]
        etags = {}
        for number in [3, 1, 5, 2, 4]:
            etags[number] = s3.upload_part(Bucket=b, Key="listed", UploadId=upload, PartNumber=number, Body=b"p" * number)["ETag"]
        page = s3.list_parts(Bucket=b, Key="listed", UploadId=upload, MaxParts=2)
        self.assertEqual([(p["PartNumber"], p["ETag"], p["Size"]) for p in page["Parts"]], [(1, etags[1], 1), (2, etags[2], 2)])
        self.assertTrue(page["IsTruncated"])
        self.assertEqual((page["MaxParts"], page["NextPartNumberMarker"], page["UploadId"]), (2, 2, upload))
        page = s3.list_parts(Bucket=b, Key="listed", UploadId=upload, MaxParts=2, PartNumberMarker=page["NextPartNumberMarker"])
        self.assertEqual([p["PartNumber"] for p in page["Parts"]], [3, 4])
        page = s3.list_parts(Bucket=b, Key="listed", UploadId=upload, PartNumberMarker=4)
        self.assertEqual(([p["PartNumber"] for p in page["Parts"]], page["IsTruncated"]), ([5], False))
        self.assertIsInstance(page["Parts"][0]["LastModified"], datetime.datetime)
        # The paginator boto3 users call walks every page.
        pages = s3.get_paginator("list_parts").paginate(Bucket=b, Key="listed", UploadId=upload, PaginationConfig={"PageSize": 2})
        self.assertEqual([p["PartNumber"] for page in pages for p in page["Parts"]], [1, 2, 3, 4, 5])
        self.assertEqual(error_of(lambda: s3.list_parts(Bucket=b, Key="other", UploadId=upload)), ("NoSuchUpload", 404))
        self.assertEqual(error_of(lambda: s3.list_parts(Bucket=b, Key="listed", UploadId="nope")), ("NoSuchUpload", 404))
        s3.abort_multipart_upload(Bucket=b, Key="listed", UploadId=upload)
        self.assertEqual(error_of(lambda: s3.list_parts(Bucket=b, Key="listed", UploadId=upload)), ("NoSuchUpload", 404))

    def test_list_multipart_uploads_with_prefix_delimiter_and_markers(self):
        s3 = self.s3
        b = new_bucket(s3, "mp-uploads")
        started = {}
        for key in ["a/1", "a/2", "b", "c/d/e", "k", "k"]:
            started.setdefault(key, []).append(s3.create_multipart_upload(Bucket=b, Key=key)["UploadId"])
        listed = s3.list_multipart_uploads(Bucket=b)
        self.assertEqual([u["Key"] for u in listed["Uploads"]], ["a/1", "a/2", "b", "c/d/e", "k", "k"])
        self.assertFalse(listed["IsTruncated"])
        self.assertEqual(sorted(u["UploadId"] for u in listed["Uploads"] if u["Key"] == "k"), sorted(started["k"]))
        self.assertIsInstance(listed["Uploads"][0]["Initiated"], datetime.datetime)
        grouped = s3.list_multipart_uploads(Bucket=b, Delimiter="/")
        self.assertEqual([u["Key"] for u in grouped["Uploads"]], ["b", "k", "k"])
        self.assertEqual([p["Prefix"] for p in grouped["CommonPrefixes"]], ["a/", "c/"])
        under = s3.list_multipart_uploads(Bucket=b, Prefix="a/")
        self.assertEqual([u["Key"] for u in under["Uploads"]], ["a/1", "a/2"])
        page = s3.list_multipart_uploads(Bucket=b, MaxUploads=5)
        self.assertTrue(page["IsTruncated"])
        self.assertEqual((page["NextKeyMarker"], page["MaxUploads"]), ("k", 5))
        rest = s3.list_multipart_uploads(Bucket=b, KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
        self.assertEqual([u["Key"] for u in rest["Uploads"]], ["k"])
        self.assertEqual({page["Uploads"][-1]["UploadId"], rest["Uploads"][0]["UploadId"]}, set(started["k"]))
        self.assertEqual(s3.list_multipart_uploads(Bucket=b, KeyMarker="b")["Uploads"][0]["Key"], "c/d/e")
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=b, PaginationConfig={"PageSize": 2})
        self.assertEqual(len([u for page in pages for u in page.get("Uploads", [])]), 6)
        s3.abort_multipart_upload(Bucket=b, Key="b", UploadId=started["b"][0])
        self.assertNotIn("b", [u["Key"] for u in s3.list_multipart_uploads(Bucket=b)["Uploads"]])
        self.assertEqual(error_of(lambda: s3.list_multipart_uploads(Bucket=b, MaxUploads=-1))[1], 400)

    def test_upload_part_copy_whole_ranged_and_conditional(self):
        s3, b = self.s3, self.bucket
        single = os.urandom((5 << 20) + 1000)
        s3.put_object(Bucket=b, Key="copy/single", Body=single)
        # A multipart source too: its parts are read in order.
        mp = s3.create_multipart_upload(Bucket=b, Key="copy/mp")["UploadId"]
        first, second = os.urandom(5 << 20), os.urandom(3000)
        e1 = s3.upload_part(Bucket=b, Key="copy/mp", UploadId=mp, PartNumber=1, Body=first)["ETag"]
        e2 = s3.upload_part(Bucket=b, Key="copy/mp", UploadId=mp, PartNumber=2, Body=second)["ETag"]
        parts = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
        s3.complete_multipart_upload(Bucket=b, Key="copy/mp", UploadId=mp, MultipartUpload=parts)
        source_etag = s3.head_object(Bucket=b, Key="copy/single")["ETag"]

        upload = s3.create_multipart_upload(Bucket=b, Key="copy/target")["UploadId"]
        copy = lambda n, source, **kw: s3.upload_part_copy(Bucket=b, Key="copy/target", UploadId=upload, PartNumber=n, CopySource=source, **kw)
        whole = copy(1, {"Bucket": b, "Key": "copy/single", "VersionId": "null"}, CopySourceIfMatch=source_etag)
        self.assertEqual(whole["CopyPartResult"]["ETag"], '"%s"' % hashlib.md5(single).hexdigest())
        self.assertIsInstance(whole["CopyPartResult"]["LastModified"], datetime.datetime)
        across = ((5 << 20) - 100, (5 << 20) + 99)  # the end of part 1 and the start of part 2
        ranged = copy(2, f"{b}/copy/mp", CopySourceRange="bytes=%d-%d" % across)
        expected = (first + second)[across[0] : across[1] + 1]
        self.assertEqual(ranged["CopyPartResult"]["ETag"], '"%s"' % hashlib.md5(expected).hexdigest())
        tail = s3.upload_part(Bucket=b, Key="copy/target", UploadId=upload, PartNumber=3, Body=b"tail")["ETag"]
        parts = {"Parts": [{"PartNumber": 1, "ETag": whole["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": ranged["CopyPartResult"]["ETag"]}, {"PartNumber": 3, "ETag": tail}]}
        # Part 2 (200 bytes) is too small to be anything but the last.
        self.assertEqual(error_of(lambda: s3.complete_multipart_upload(Bucket=b, Key="copy/target", UploadId=upload, MultipartUpload=parts)), ("EntityTooSmall", 400))
        parts["Parts"] = parts["Parts"][:2]
        s3.complete_multipart_upload(Bucket=b, Key="copy/target", UploadId=upload, MultipartUpload=parts)
        self.assertEqual(s3.get_object(Bucket=b, Key="copy/target")["Body"].read(), single + expected)

        other = s3.create_multipart_upload(Bucket=b, Key="copy/refused")["UploadId"]
        refuse = lambda **kw: error_of(lambda: s3.upload_part_copy(Bucket=b, Key="copy/refused", UploadId=other, PartNumber=1, CopySource=f"{b}/copy/single", **kw))
        size = len(single)
        for bad in ["bytes=0-%d" % size, "bytes=10-5", "bytes=-10", "bytes=5-", "items=0-1"]:
            self.assertEqual(refuse(CopySourceRange=bad), ("InvalidArgument", 400), bad)
        self.assertEqual(refuse(CopySourceIfMatch='"0000"'), ("PreconditionFailed", 412))
        self.assertEqual(refuse(CopySourceIfNoneMatch=source_etag), ("PreconditionFailed", 412))
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
        past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
        self.assertEqual(refuse(CopySourceIfModifiedSince=future), ("PreconditionFailed", 412))
        self.assertEqual(refuse(CopySourceIfUnmodifiedSince=past), ("PreconditionFailed", 412))
        self.assertEqual(error_of(lambda: s3.upload_part_copy(Bucket=b, Key="copy/refused", UploadId=other, PartNumber=1, CopySource=f"{b}/copy/none")), ("NoSuchKey", 404))
        self.assertEqual(error_of(lambda: s3.upload_part_copy(Bucket=b, Key="copy/refused", UploadId="nope", PartNumber=1, CopySource=f"{b}/copy/single")), ("NoSuchUpload", 404))
        self.assertEqual(s3.list_parts(Bucket=b, Key="copy/refused", UploadId=other).get("Parts", []), [])
        # A key without read access to the source may not copy it.
        self.assertEqual(error_of(lambda: client(KEY2, SECRET2).upload_part_copy(Bucket=b, Key="copy/refused", UploadId=other, PartNumber=1, CopySource=f"{b}/copy/single"))[0], "AccessDenied")

    def test_copy_object_of_a_multipart_source(self):
        s3, b = self.s3, self.bucket
        mp = s3.create_multipart_upload(Bucket=b, Key="cmp/src")["UploadId"]
        first, second = os.urandom(5 << 20), os.urandom(10)
        e1 = s3.upload_part(Bucket=b, Key="cmp/src", UploadId=mp, PartNumber=1, Body=first)["ETag"]
        e2 = s3.upload_part(Bucket=b, Key="cmp/src", UploadId=mp, PartNumber=2, Body=second)["ETag"]
        s3.complete_multipart_upload(Bucket=b, Key="cmp/src", UploadId=mp, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
        s3.copy_object(Bucket=b, Key="cmp/dst", CopySource=f"{b}/cmp/src")
        self.assertEqual(s3.get_object(Bucket=b, Key="cmp/dst")["Body"].read(), first + second)


class Checksums(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "checksums")

    def head_checksums(self, key, **kw):
        head = self.s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED", **kw)
        return {k: v for k, v in head.items() if k.startswith("Checksum")}

    def test_the_check_values_of_the_algorithms(self):
        self.assertEqual(checksum_of("CRC32C", b"123456789"), "4waSgw==")  # 0xe3069283
        self.assertEqual(checksum_of("CRC64NVME", b"123456789"), "rosUhgp5mIg=")  # 0xae8b14860a799888

    def test_each_algorithm_is_verified_kept_and_returned(self):
        body = os.urandom(100_000)
        for algorithm in ["CRC32", "SHA1", "SHA256"]:
            key = f"boto3-{algorithm}"
            put = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ChecksumAlgorithm=algorithm)
            self.assertEqual(put[f"Checksum{algorithm}"], checksum_of(algorithm, body))
            self.assertEqual(self.head_checksums(key), {f"Checksum{algorithm}": checksum_of(algorithm, body), "ChecksumType": "FULL_OBJECT"})
            got = self.s3.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            self.assertEqual((got[f"Checksum{algorithm}"], got["Body"].read()), (checksum_of(algorithm, body), body))
        # boto3 computes CRC32C and CRC64NVME only with the CRT: these go as raw signed requests.
        for algorithm in ["CRC32C", "CRC64NVME", "SHA256"]:
            key = f"raw-{algorithm}"
            header = {f"x-amz-checksum-{algorithm.lower()}": checksum_of(algorithm, body)}
            status, text = signed_request("PUT", f"/{self.bucket}/{key}", body=body, headers=header)
            self.assertEqual(status, 200, text)
            self.assertEqual(self.head_checksums(key)[f"Checksum{algorithm}"], checksum_of(algorithm, body))
            # Wrong, malformed, or two at once: refused, nothing stored.
            wrong = {f"x-amz-checksum-{algorithm.lower()}": checksum_of(algorithm, b"other")}
            status, text = signed_request("PUT", f"/{self.bucket}/wrong-{algorithm}", body=body, headers=wrong)
            self.assertEqual((status, b"BadDigest" in text), (400, True), text)
            malformed = {f"x-amz-checksum-{algorithm.lower()}": "bm90IGEgY2hlY2tzdW0="}
            status, text = signed_request("PUT", f"/{self.bucket}/wrong-{algorithm}", body=body, headers=malformed)
            self.assertEqual((status, b"InvalidRequest" in text), (400, True), text)
            self.assertEqual(error_of(lambda: self.s3.head_object(Bucket=self.bucket, Key=f"wrong-{algorithm}")), ("404", 404))
        two = {"x-amz-checksum-crc32": checksum_of("CRC32", body), "x-amz-checksum-sha1": checksum_of("SHA1", body)}
        status, text = signed_request("PUT", f"/{self.bucket}/two", body=body, headers=two)
        self.assertEqual((status, b"InvalidRequest" in text), (400, True), text)
        # An object sent without a checksum gets S3's default, CRC64NVME; a range none.
        status, text = signed_request("PUT", f"/{self.bucket}/plain", body=body)
        self.assertEqual(status, 200, text)
        self.assertEqual(self.head_checksums("plain"), {"ChecksumCRC64NVME": checksum_of("CRC64NVME", body), "ChecksumType": "FULL_OBJECT"})
        self.assertEqual(self.head_checksums("plain", Range="bytes=0-9"), {})
        self.assertEqual({k for k in self.s3.head_object(Bucket=self.bucket, Key="plain") if k.startswith("Checksum")}, set())
        # A copy keeps a checksum of the same algorithm.
        self.s3.copy_object(Bucket=self.bucket, Key="copied", CopySource=f"{self.bucket}/raw-CRC32C")
        self.assertEqual(self.head_checksums("copied")["ChecksumCRC32C"], checksum_of("CRC32C", body))

    def test_trailing_checksums_of_every_algorithm(self):
        body = os.urandom(70_000)
        for algorithm in ["CRC32C", "CRC64NVME", "SHA1", "SHA256"]:
            name = f"x-amz-checksum-{algorithm.lower()}"
            status, text = signed_request("PUT", f"/{self.bucket}/trailer-{algorithm}", body=body, chunk=16384, trailer={name: checksum_of(algorithm, body)})
            self.assertEqual(status, 200, text)
            self.assertEqual(self.head_checksums(f"trailer-{algorithm}")[f"Checksum{algorithm}"], checksum_of(algorithm, body))
            self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key=f"trailer-{algorithm}")["Body"].read(), body)
            status, text = signed_request("PUT", f"/{self.bucket}/bad-trailer", body=body, chunk=16384, trailer={name: checksum_of(algorithm, b"x")})
            self.assertEqual((status, b"BadDigest" in text), (400, True), text)
        self.assertEqual(error_of(lambda: self.s3.head_object(Bucket=self.bucket, Key="bad-trailer")), ("404", 404))

    def test_multipart_composite_checksum(self):
        s3, b = self.s3, self.bucket
        parts = [os.urandom(5 << 20), os.urandom(1234)]
        created = s3.create_multipart_upload(Bucket=b, Key="composite", ChecksumAlgorithm="SHA256")
        self.assertEqual((created["ChecksumAlgorithm"], created["ChecksumType"]), ("SHA256", "COMPOSITE"))
        upload = created["UploadId"]
        done = []
        for n, part in enumerate(parts, 1):
            sent = s3.upload_part(Bucket=b, Key="composite", UploadId=upload, PartNumber=n, Body=part, ChecksumAlgorithm="SHA256")
            self.assertEqual(sent["ChecksumSHA256"], checksum_of("SHA256", part))
            done.append({"PartNumber": n, "ETag": sent["ETag"], "ChecksumSHA256": sent["ChecksumSHA256"]})
        listed = s3.list_parts(Bucket=b, Key="composite", UploadId=upload)
        self.assertEqual([p["ChecksumSHA256"] for p in listed["Parts"]], [checksum_of("SHA256", p) for p in parts])
        self.assertEqual(listed["ChecksumAlgorithm"], "SHA256")
        # A part whose listed checksum is not the one it was sent with is not the part.
        forged = [dict(done[0], ChecksumSHA256=checksum_of("SHA256", b"x")), done[1]]
        self.assertEqual(error_of(lambda: s3.complete_multipart_upload(Bucket=b, Key="composite", UploadId=upload, MultipartUpload={"Parts": forged})), ("InvalidPart", 400))
        completed = s3.complete_multipart_upload(Bucket=b, Key="composite", UploadId=upload, MultipartUpload={"Parts": done})
        self.assertEqual(completed["ChecksumSHA256"], composite_of("SHA256", parts))
        self.assertEqual(self.head_checksums("composite"), {"ChecksumSHA256": composite_of("SHA256", parts), "ChecksumType": "COMPOSITE"})
        self.assertEqual(s3.get_object(Bucket=b, Key="composite")["Body"].read(), b"".join(parts))
        # A part of the wrong algorithm is refused.
        other = s3.create_multipart_upload(Bucket=b, Key="mixed", ChecksumAlgorithm="SHA1")["UploadId"]
        self.assertEqual(error_of(lambda: s3.upload_part(Bucket=b, Key="mixed", UploadId=other, PartNumber=1, Body=b"x", ChecksumAlgorithm="CRC32")), ("InvalidRequest", 400))
        self.assertEqual(error_of(lambda: s3.create_multipart_upload(Bucket=b, Key="x", ChecksumAlgorithm="SHA1", ChecksumType="FULL_OBJECT")), ("InvalidRequest", 400))

    def test_multipart_full_object_crc(self):
        s3, b = self.s3, self.bucket
        parts = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(777)]
        whole = b"".join(parts)
        for algorithm in ["CRC32", "CRC64NVME"]:
            key = f"full-{algorithm}"
            created = s3.create_multipart_upload(Bucket=b, Key=key, ChecksumAlgorithm=algorithm, ChecksumType="FULL_OBJECT")
            self.assertEqual(created["ChecksumType"], "FULL_OBJECT")
            upload = created["UploadId"]
            done = []
            for n, part in enumerate(parts, 1):
                # The CRC64NVME of a part goes as a precomputed value (boto3 needs the CRT to compute one).
                sent = s3.upload_part(Bucket=b, Key=key, UploadId=upload, PartNumber=n, Body=part, **{f"Checksum{algorithm}": checksum_of(algorithm, part)})
                done.append({"PartNumber": n, "ETag": sent["ETag"]})
            complete = lambda value: s3.complete_multipart_upload(Bucket=b, Key=key, UploadId=upload, MultipartUpload={"Parts": done}, ChecksumType="FULL_OBJECT", **{f"Checksum{algorithm}": value})
            self.assertEqual(error_of(lambda: complete(checksum_of(algorithm, b"not the body"))), ("BadDigest", 400))
            completed = complete(checksum_of(algorithm, whole))
            self.assertEqual(completed[f"Checksum{algorithm}"], checksum_of(algorithm, whole))
            self.assertEqual(self.head_checksums(key), {f"Checksum{algorithm}": checksum_of(algorithm, whole), "ChecksumType": "FULL_OBJECT"})


class Conditions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "conditions")

    def test_if_none_match_star_has_exactly_one_winner_among_racing_threads(self):
        import threading

        outcomes = {}

        def race(i):
            c = client()
            try:
                c.put_object(Bucket=self.bucket, Key="lock", Body=b"writer %d" % i, IfNoneMatch="*")
                outcomes[i] = "won"
            except ClientError as e:
                outcomes[i] = e.response["Error"]["Code"]

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        winners = [i for i, o in outcomes.items() if o == "won"]
        self.assertEqual(len(winners), 1, outcomes)
        self.assertEqual(sorted(set(outcomes.values())), ["PreconditionFailed", "won"], outcomes)
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="lock")["Body"].read(), b"writer %d" % winners[0])

    def test_if_match_is_compare_and_swap(self):
        s3, b = self.s3, self.bucket
        first = s3.put_object(Bucket=b, Key="cas", Body=b"one")["ETag"]
        second = s3.put_object(Bucket=b, Key="cas", Body=b"two", IfMatch=first)["ETag"]
        self.assertEqual(error_of(lambda: s3.put_object(Bucket=b, Key="cas", Body=b"three", IfMatch=first)), ("PreconditionFailed", 412))
        self.assertEqual(s3.get_object(Bucket=b, Key="cas")["Body"].read(), b"two")
        self.assertEqual(s3.head_object(Bucket=b, Key="cas")["ETag"], second)
        self.assertEqual(error_of(lambda: s3.put_object(Bucket=b, Key="absent", Body=b"x", IfMatch=first)), ("NoSuchKey", 404))

    def test_complete_multipart_upload_is_conditional_too(self):
        import threading

        s3, b = self.s3, self.bucket

        def upload(key, body):
            upload_id = s3.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
            etag = s3.upload_part(Bucket=b, Key=key, UploadId=upload_id, PartNumber=1, Body=body)["ETag"]
            return upload_id, {"Parts": [{"PartNumber": 1, "ETag": etag}]}

        # Racing creators: exactly one completes; the losers' uploads are still there.
        uploads = [upload("mp-lock", b"completer %d" % i) for i in range(6)]
        outcomes = {}

        def race(i):
            upload_id, parts = uploads[i]
            try:
                client().complete_multipart_upload(Bucket=b, Key="mp-lock", UploadId=upload_id, MultipartUpload=parts, IfNoneMatch="*")
                outcomes[i] = "won"
            except ClientError as e:
                outcomes[i] = e.response["Error"]["Code"]

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(uploads))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        winners = [i for i, o in outcomes.items() if o == "won"]
        self.assertEqual(len(winners), 1, outcomes)
        self.assertEqual(sorted(set(outcomes.values())), ["PreconditionFailed", "won"], outcomes)
        self.assertEqual(s3.get_object(Bucket=b, Key="mp-lock")["Body"].read(), b"completer %d" % winners[0])
        for i, (upload_id, _) in enumerate(uploads):
            if i != winners[0]:
                s3.abort_multipart_upload(Bucket=b, Key="mp-lock", UploadId=upload_id)

        # Compare and swap: only the ETag read last may be replaced.
        first = s3.put_object(Bucket=b, Key="mp-cas", Body=b"one")["ETag"]
        upload_id, parts = upload("mp-cas", b"two")
        second = s3.complete_multipart_upload(Bucket=b, Key="mp-cas", UploadId=upload_id, MultipartUpload=parts, IfMatch=first)["ETag"]
        upload_id, parts = upload("mp-cas", b"three")
        stale = lambda: s3.complete_multipart_upload(Bucket=b, Key="mp-cas", UploadId=upload_id, MultipartUpload=parts, IfMatch=first)
        self.assertEqual(error_of(stale), ("PreconditionFailed", 412))
        self.assertEqual(s3.get_object(Bucket=b, Key="mp-cas")["Body"].read(), b"two")
        self.assertEqual(s3.head_object(Bucket=b, Key="mp-cas")["ETag"], second)
        absent_id, absent_parts = upload("mp-absent", b"x")
        absent = lambda: s3.complete_multipart_upload(Bucket=b, Key="mp-absent", UploadId=absent_id, MultipartUpload=absent_parts, IfMatch=first)
        self.assertEqual(error_of(absent), ("NoSuchKey", 404))
        s3.complete_multipart_upload(Bucket=b, Key="mp-cas", UploadId=upload_id, MultipartUpload=parts, IfMatch=second)
        self.assertEqual(s3.get_object(Bucket=b, Key="mp-cas")["Body"].read(), b"three")

    def test_conditional_get(self):
        s3, b = self.s3, self.bucket
        etag = s3.put_object(Bucket=b, Key="cond", Body=b"body")["ETag"]
        self.assertEqual(s3.get_object(Bucket=b, Key="cond", IfMatch=etag)["Body"].read(), b"body")
        self.assertEqual(error_of(lambda: s3.get_object(Bucket=b, Key="cond", IfMatch='"0000"')), ("PreconditionFailed", 412))
        self.assertEqual(error_of(lambda: s3.get_object(Bucket=b, Key="cond", IfNoneMatch=etag)), ("304", 304))
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
        past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
        self.assertEqual(error_of(lambda: s3.get_object(Bucket=b, Key="cond", IfModifiedSince=future)), ("304", 304))
        self.assertEqual(error_of(lambda: s3.get_object(Bucket=b, Key="cond", IfUnmodifiedSince=past)), ("PreconditionFailed", 412))
        self.assertEqual(s3.get_object(Bucket=b, Key="cond", IfModifiedSince=past)["Body"].read(), b"body")


class VirtualHosts(unittest.TestCase):
    """`bucket.s3.test/key` with the gateway's --root-domain s3.test; names under s3.test
    resolve to the gateway's loopback address inside this test only."""

    def setUp(self):
        import socket

        self.real_getaddrinfo = socket.getaddrinfo
        loopback = urllib.parse.urlparse(ENDPOINT).hostname

        def resolve(host, *args, **kwargs):
            if isinstance(host, str) and (host == "s3.test" or host.endswith(".s3.test")):
                host = loopback
            return self.real_getaddrinfo(host, *args, **kwargs)

        socket.getaddrinfo = resolve

    def tearDown(self):
        import socket

        socket.getaddrinfo = self.real_getaddrinfo

    def test_virtual_hosted_style_requests(self):
        port = urllib.parse.urlparse(ENDPOINT).port
        virtual = boto3.client(
            "s3",
            endpoint_url=f"http://s3.test:{port}",
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "virtual"}),
        )
        sent = []
        virtual.meta.events.register("before-send.s3", lambda request, **kw: sent.append(request.url))
        bucket = f"virtual-{uuid.uuid4().hex[:8]}"
        virtual.create_bucket(Bucket=bucket)
        virtual.put_object(Bucket=bucket, Key="dir/v.txt", Body=b"virtual")
        self.assertTrue(all(url.startswith(f"http://{bucket}.s3.test:") for url in sent[1:]), sent)
        self.assertEqual(virtual.get_object(Bucket=bucket, Key="dir/v.txt")["Body"].read(), b"virtual")
        self.assertEqual([o["Key"] for o in virtual.list_objects_v2(Bucket=bucket)["Contents"]], ["dir/v.txt"])
        self.assertEqual(client().get_object(Bucket=bucket, Key="dir/v.txt")["Body"].read(), b"virtual")


class Listing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "listing")
        cls.keys = ["a/1", "a/2", "a/3", "a/b/1", "b/1", "c", "d", "e/x/y"]
        for key in cls.keys:
            cls.s3.put_object(Bucket=cls.bucket, Key=key, Body=key.encode())

    def test_v2_everything_in_pages(self):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, PaginationConfig={"PageSize": 3})
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        self.assertEqual(keys, self.keys)

    def test_v2_delimiter_prefix_and_tokens(self):
        s3, b = self.s3, self.bucket
        first = s3.list_objects_v2(Bucket=b, Delimiter="/", MaxKeys=2)
        self.assertEqual([p["Prefix"] for p in first["CommonPrefixes"]], ["a/", "b/"])
        self.assertEqual(first["KeyCount"], 2)
        self.assertTrue(first["IsTruncated"])
        second = s3.list_objects_v2(Bucket=b, Delimiter="/", MaxKeys=2, ContinuationToken=first["NextContinuationToken"])
        self.assertEqual([o["Key"] for o in second["Contents"]], ["c", "d"])
        third = s3.list_objects_v2(Bucket=b, Delimiter="/", MaxKeys=2, ContinuationToken=second["NextContinuationToken"])
        self.assertEqual([p["Prefix"] for p in third["CommonPrefixes"]], ["e/"])
        self.assertFalse(third["IsTruncated"])
        under_a = s3.list_objects_v2(Bucket=b, Prefix="a/", Delimiter="/")
        self.assertEqual([o["Key"] for o in under_a["Contents"]], ["a/1", "a/2", "a/3"])
        self.assertEqual([p["Prefix"] for p in under_a["CommonPrefixes"]], ["a/b/"])
        after = s3.list_objects_v2(Bucket=b, StartAfter="a/3")
        self.assertEqual([o["Key"] for o in after["Contents"]], self.keys[3:])
        self.assertEqual(s3.list_objects_v2(Bucket=b, Prefix="zzz")["KeyCount"], 0)
        content = s3.list_objects_v2(Bucket=b, Prefix="c")["Contents"][0]
        self.assertEqual(content["Size"], 1)
        self.assertEqual(content["ETag"], '"%s"' % hashlib.md5(b"c").hexdigest())

    def test_versions_are_each_key_once_as_null(self):
        s3, b = self.s3, self.bucket
        self.assertNotIn("Status", s3.get_bucket_versioning(Bucket=b))
        first = s3.list_object_versions(Bucket=b, MaxKeys=3)
        self.assertEqual([(v["Key"], v["VersionId"], v["IsLatest"]) for v in first["Versions"]], [(k, "null", True) for k in self.keys[:3]])
        self.assertTrue(first["IsTruncated"])
        rest = s3.list_object_versions(Bucket=b, KeyMarker=first["NextKeyMarker"])
        self.assertEqual([v["Key"] for v in rest["Versions"]], self.keys[3:])
        folded = s3.list_object_versions(Bucket=b, Delimiter="/")
        self.assertEqual([p["Prefix"] for p in folded["CommonPrefixes"]], ["a/", "b/", "e/"])

    def test_v1_markers(self):
        s3, b = self.s3, self.bucket
        first = s3.list_objects(Bucket=b, MaxKeys=3)
        self.assertEqual([o["Key"] for o in first["Contents"]], self.keys[:3])
        self.assertTrue(first["IsTruncated"])
        rest = s3.list_objects(Bucket=b, Marker=first["NextMarker"])
        self.assertEqual([o["Key"] for o in rest["Contents"]], self.keys[3:])
        folded = s3.list_objects(Bucket=b, Delimiter="/")
        self.assertEqual([p["Prefix"] for p in folded["CommonPrefixes"]], ["a/", "b/", "e/"])


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = client()
        cls.bucket = new_bucket(cls.s3, "auth")

    def test_a_bad_signature_is_refused_and_stores_nothing(self):
        forger = client(KEY, SECRET[:-1] + ("A" if SECRET[-1] != "A" else "B"))
        self.assertEqual(
            error_of(lambda: forger.put_object(Bucket=self.bucket, Key="forged", Body=b"x" * 1000)),
            ("SignatureDoesNotMatch", 403),
        )
        self.assertEqual(error_of(lambda: self.s3.head_object(Bucket=self.bucket, Key="forged")), ("404", 404))

    def test_an_unknown_key_is_refused(self):
        stranger = client("AKNOSUCHKEY000000000", "secret")
        self.assertEqual(error_of(lambda: stranger.list_buckets()), ("InvalidAccessKeyId", 403))

    def test_a_key_without_a_grant_is_denied(self):
        other = client(KEY2, SECRET2)
        self.assertEqual(error_of(lambda: other.put_object(Bucket=self.bucket, Key="k", Body=b"x")), ("AccessDenied", 403))
        self.assertEqual(error_of(lambda: other.list_objects_v2(Bucket=self.bucket)), ("AccessDenied", 403))
        self.assertNotIn(self.bucket, [b["Name"] for b in other.list_buckets()["Buckets"]])

    def test_a_clock_skewed_request_is_refused(self):
        status, text = signed_request("GET", f"/{self.bucket}", amz_date="20200101T000000Z")
        self.assertEqual(status, 403, text)
        self.assertIn(b"RequestTimeTooSkewed", text)
        status, text = signed_request("GET", f"/{self.bucket}")
        self.assertEqual(status, 200, text)


if __name__ == "__main__":
    print(f"boto3 {boto3.__version__}, botocore {botocore.__version__}")
    unittest.main(verbosity=2)
