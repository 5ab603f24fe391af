"""ListObjectsV2 against a bucket filled by `aether bench populate --bucket` (keys
key-000000000, key-000000001, ..): the latency of 1,000-key pages starting at random
keys, and the time of a full listing page after page. Requests are signed with
botocore's SigV4 signer and sent over one kept-alive connection; the XML is not parsed
(only the continuation token is picked out), so the figures are the server's and not
boto3's XML parser's, which costs more than the server on a 1,000-key page (its figure
for the first page is printed beside).

    python3 bench/s3_listing.py ENDPOINT KEY SECRET BUCKET KEYS --pages 200
"""

import argparse
import http.client
import json
import random
import re
import time
import urllib.parse

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
COUNT = re.compile(rb"<KeyCount>([0-9]+)</KeyCount>")


def main():
    parser = argparse.ArgumentParser()
    for name in ("endpoint", "key", "secret", "bucket"):
        parser.add_argument(name)
    parser.add_argument("keys", type=int)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="also list the whole bucket")
    args = parser.parse_args()
    credentials = Credentials(args.key, args.secret)
    url = urllib.parse.urlsplit(args.endpoint)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)

    def page(query):
        target = f"{args.endpoint}/{args.bucket}?{urllib.parse.urlencode(sorted(query.items()))}"
        request = AWSRequest(method="GET", url=target, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
        started = time.monotonic()
        connection.request("GET", urllib.parse.urlsplit(target).path + "?" + urllib.parse.urlsplit(target).query,
                           headers=dict(request.headers))
        response = connection.getresponse()
        body = response.read()
        elapsed = time.monotonic() - started
        if response.status != 200:
            raise SystemExit(f"ListObjectsV2 answered {response.status}: {body[:300]!r}")
        return elapsed, body

    latencies = []
    rng = random.Random(7)
    for _ in range(args.pages):
        start = f"key-{rng.randrange(max(1, args.keys - 1000)):09d}"
        elapsed, body = page({"list-type": "2", "start-after": start})
        if int(COUNT.search(body).group(1)) != 1000:
            raise SystemExit(f"a page after {start} did not hold 1,000 keys")
        latencies.append(elapsed)
    latencies.sort()
    pick = lambda p: round(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000, 2)
    figures = {"keys": args.keys, "pages": args.pages, "page_ms": {"p50": pick(50), "p99": pick(99)}}

    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1", aws_access_key_id=args.key,
                      aws_secret_access_key=args.secret)
    started = time.monotonic()
    s3.list_objects_v2(Bucket=args.bucket)
    figures["boto3_first_page_ms"] = round((time.monotonic() - started) * 1000, 2)

    if args.full:
        listed, pages, token = 0, 0, None
        started = time.monotonic()
        while True:
            query = {"list-type": "2"}
            if token is not None:
                query["continuation-token"] = token
            _, body = page(query)
            listed += int(COUNT.search(body).group(1))
            pages += 1
            found = TOKEN.search(body)
            if not found:
                break
            token = found.group(1).decode()
        figures["full_listing"] = {"keys": listed, "pages": pages, "secs": round(time.monotonic() - started, 2)}
        if listed != args.keys:
            raise SystemExit(f"the full listing found {listed} keys, not {args.keys}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
