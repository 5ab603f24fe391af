"""The S3 path measured with boto3 as the client (issue 11's table): 4 KiB PUTs on one
thread and on 8, 4 KiB GETs, 64 MiB PUTs and GETs, against any S3 endpoint, so the same
script measures AetherStore's gateway, SeaweedFS's and a server that does nothing
(bench/null_s3.py: where the client itself is the limit). Every GET's body is checked.

    python3 bench/s3_client.py ENDPOINT KEY SECRET --seconds 5 > figures.json

Prints one JSON object: for each workload, operations per second, MB/s and latency
percentiles in milliseconds.
"""

import argparse
import json
import os
import threading
import time
import uuid

import boto3
from botocore.config import Config

SMALL = 4096
LARGE = 64 << 20


def client(args):
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id=args.key,
        aws_secret_access_key=args.secret,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def percentile(samples, p):
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


def run(args, threads, seconds, min_ops, operation):
    """Runs `operation(s3, thread, i)` on `threads` threads for `seconds` (and at least
    `min_ops` operations per thread); returns the figures."""
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(thread):
        s3, mine, i = client(args), [], 0
        while time.monotonic() < deadline or i < min_ops:
            started = time.monotonic()
            try:
                operation(s3, thread, i)
            except Exception as error:  # counted, and the run goes on
                with lock:
                    errors.append(repr(error)[:200])
            mine.append(time.monotonic() - started)
            i += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    return {
        "threads": threads,
        "ops": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "ops_per_sec": round(len(latencies) / elapsed, 1),
        "latency_ms": {"p50": round(percentile(latencies, 50), 2), "p99": round(percentile(latencies, 99), 2)},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("key")
    parser.add_argument("secret")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--bucket", default=f"bench-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()
    s3 = client(args)
    try:
        s3.create_bucket(Bucket=args.bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    small, large = os.urandom(SMALL), os.urandom(LARGE)
    run_id = uuid.uuid4().hex[:6]
    figures = {}

    def put_small(s3, thread, i):
        s3.put_object(Bucket=args.bucket, Key=f"small/{run_id}/{thread}/{i}", Body=small)

    figures["put_4k_t1"] = run(args, 1, args.seconds, 1, put_small)
    figures["put_4k_t8"] = run(args, 8, args.seconds, 1, put_small)

    working_set = 100
    for i in range(working_set):
        s3.put_object(Bucket=args.bucket, Key=f"get/{run_id}/{i}", Body=small)

    def get_small(s3, thread, i):
        body = s3.get_object(Bucket=args.bucket, Key=f"get/{run_id}/{(thread * 7 + i) % working_set}")["Body"].read()
        if body != small:
            raise ValueError(f"a 4 KiB GET answered {len(body)} other bytes")

    figures["get_4k_t1"] = run(args, 1, args.seconds, 1, get_small)

    def put_large(s3, thread, i):
        s3.put_object(Bucket=args.bucket, Key=f"large/{run_id}/{i % 2}", Body=large)

    figures["put_64m_t1"] = run(args, 1, args.seconds, 2, put_large)

    def get_large(s3, thread, i):
        body = s3.get_object(Bucket=args.bucket, Key=f"large/{run_id}/{i % 2}")["Body"]
        expected, got = memoryview(large), 0
        while chunk := body.read(1 << 20):
            if expected[got : got + len(chunk)] != chunk:
                raise ValueError(f"a 64 MiB GET answered other bytes at {got}")
            got += len(chunk)
        if got != LARGE:
            raise ValueError(f"a 64 MiB GET answered {got} bytes")

    figures["get_64m_t1"] = run(args, 1, args.seconds, 2, get_large)
    for name, size in (("put_64m_t1", LARGE), ("get_64m_t1", LARGE), ("put_4k_t1", SMALL), ("put_4k_t8", SMALL), ("get_4k_t1", SMALL)):
        figures[name]["mb_per_sec"] = round(figures[name]["ops_per_sec"] * size / 1e6, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
