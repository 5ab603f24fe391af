#!/usr/bin/env python3
"""The chaos test's client side, run inside a container on the cluster's private network
(deploy/chaos.sh starts it). Three commands:

  client.py ready N        waits until the master lists N alive datanodes
  client.py workload ...   concurrent uploads, reads and deletes of varied sizes with the
                           real `aether` client, until the file RESULTS/stop appears;
                           every operation and its outcome goes to RESULTS/ops-W.jsonl
  client.py check ...      after the faults healed: waits for every object to be back at
                           its replication factor, reads every copy back, and checks that
                           no acknowledged object is lost or changed and no acknowledged
                           delete came back; writes RESULTS/check.json

Python's standard library only: the container has python3 and nothing else.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

MASTER = os.environ.get("AETHER_MASTER", "http://aether-chaos-master:42100")


def log(message):
    print(time.strftime("%H:%M:%S", time.gmtime()) + " [chaos-client] " + message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Plain HTTP to the cluster's containers


def split_url(url):
    rest = url.split("://", 1)[1]
    host, _, port = rest.partition(":")
    return host, int(port or 80)


def request(base, method, path, timeout=5.0):
    """One request on a fresh connection: (status, body bytes), or (None, error text)."""
    host, port = split_url(base)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        return None, str(e).encode()
    finally:
        conn.close()


def alive_datanodes():
    status, body = request(MASTER, "GET", "/api/nodes")
    if status != 200:
        return None
    return [n for n in json.loads(body)["nodes"] if n.get("state") == "alive"]


# ---------------------------------------------------------------------------------------
# ready


def cmd_ready(args):
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        nodes = alive_datanodes()
        if nodes is not None and len(nodes) >= args.count:
            log("the master lists %d alive datanodes" % len(nodes))
            return 0
        time.sleep(0.5)
    log("gave up after %ds waiting for %d alive datanodes (last answer: %s)" % (args.timeout, args.count, nodes))
    return 1


# ---------------------------------------------------------------------------------------
# workload

# (weight, smallest, largest): mostly small objects, some of a few MiB.
SIZES = [(30, 1, 100), (35, 1 << 10, 64 << 10), (25, 64 << 10, 512 << 10), (10, 1 << 20, 3 << 20)]


def pick_size(rng):
    weight = rng.randrange(sum(w for w, _, _ in SIZES))
    for w, low, high in SIZES:
        if weight < w:
            return rng.randint(low, high)
        weight -= w
    raise AssertionError


class Objects:
    """What the workload knows: acknowledged objects it may read or delete."""

    def __init__(self):
        self.lock = threading.Lock()
        self.readable = {}  # id -> sha256
        self.busy = set()

    def add(self, object_id, sha):
        with self.lock:
            self.readable[object_id] = sha

    def take_for_delete(self, rng):
        with self.lock:
            free = [i for i in self.readable if i not in self.busy]
            if not free:
                return None
            object_id = rng.choice(free)
            del self.readable[object_id]
            return object_id

    def pick_for_read(self, rng):
        with self.lock:
            if not self.readable:
                return None, None
            object_id = rng.choice(list(self.readable))
            self.busy.add(object_id)
            return object_id, self.readable[object_id]

    def done_reading(self, object_id):
        with self.lock:
            self.busy.discard(object_id)


def run_aether(args, timeout):
    """Runs the aether client: (ok, stdout, last line of stderr)."""
    try:
        done = subprocess.run(["aether"] + args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, b"", "no answer within %ds (killed)" % timeout
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return done.returncode == 0, done.stdout, (lines[-1] if lines else "exit status %d" % done.returncode)


def worker(n, args, objects, stop_file):
    rng = random.Random(args.seed * 1000 + n)
    scratch = "/tmp/chaos-w%d" % n
    os.makedirs(scratch, exist_ok=True)
    interval = args.workers / args.rate
    seq = 0
    with open(os.path.join(args.results, "ops-%d.jsonl" % n), "a") as out:
        while not os.path.exists(stop_file):
            started = time.time()
            roll = rng.random()
            record = {"worker": n, "t0": started}
            if roll < 0.5 or not objects.readable:
                seq += 1
                size = pick_size(rng)
                data = random.Random("%d-%d-%d" % (args.seed, n, seq)).randbytes(size)
                path = os.path.join(scratch, "object")
                with open(path, "wb") as f:
                    f.write(data)
                sha = hashlib.sha256(data).hexdigest()
                ok, stdout, err = run_aether(["put", path], args.op_timeout)
                object_id = stdout.decode(errors="replace").strip().splitlines()[-1:] if ok else []
                record.update(op="put", size=size, sha256=sha)
                if ok and object_id:
                    record.update(ok=True, id=object_id[0])
                    objects.add(object_id[0], sha)
                else:
                    record.update(ok=False, error=err)
            elif roll < 0.85:
                object_id, sha = objects.pick_for_read(rng)
                if object_id is None:
                    continue
                path = os.path.join(scratch, "read")
                ok, _, err = run_aether(["get", object_id, "-o", path], args.op_timeout)
                record.update(op="get", id=object_id, ok=ok)
                if ok:
                    with open(path, "rb") as f:
                        got = hashlib.sha256(f.read()).hexdigest()
                    if got != sha:
                        record.update(ok=False, wrong_bytes=True, error="read back other bytes (sha256 %s)" % got)
                else:
                    record.update(error=err)
                objects.done_reading(object_id)
            else:
                object_id = objects.take_for_delete(rng)
                if object_id is None:
                    continue
                ok, _, err = run_aether(["rm", object_id], args.op_timeout)
                record.update(op="delete", id=object_id, ok=ok)
                if not ok:
                    record.update(error=err)
            record["t1"] = time.time()
            out.write(json.dumps(record) + "\n")
            out.flush()
            pause = interval - (time.time() - started)
            if pause > 0:
                time.sleep(pause * rng.uniform(0.5, 1.5))


def cmd_workload(args):
    os.makedirs(args.results, exist_ok=True)
    stop_file = os.path.join(args.results, "stop")
    objects = Objects()
    crashed = []

    def run(n):
        try:
            worker(n, args, objects, stop_file)
        except Exception as e:  # noqa: BLE001 -- a broken worker must fail the run, not vanish
            crashed.append(n)
            log("worker %d stopped by %s: %s" % (n, type(e).__name__, e))
            raise

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(args.workers)]
    log("workload: %d workers, about %.1f operations a second, until %s appears" % (args.workers, args.rate, stop_file))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log("workload stopped" + (" (workers %s had crashed)" % crashed if crashed else ""))
    return 1 if crashed else 0


def load_ops(results):
    ops = []
    for name in sorted(os.listdir(results)):
        if name.startswith("ops-") and name.endswith(".jsonl"):
            with open(os.path.join(results, name)) as f:
                ops.extend(json.loads(line) for line in f if line.strip())
    ops.sort(key=lambda op: op["t0"])
    return ops


# ---------------------------------------------------------------------------------------
# check


class Checks:
    def __init__(self):
        self.results = []

    def record(self, ok, what, detail=""):
        self.results.append({"ok": bool(ok), "what": what, "detail": detail})
        log(("ok: " if ok else "NOT OK: ") + what + (" -- " + detail if detail else ""))


def holders(object_id, datanodes):
    """The datanodes that answer HEAD /objects/ID with 200: the copies that really exist."""
    return [d for d in datanodes if request(d, "HEAD", "/objects/" + object_id, timeout=3)[0] == 200]


def master_view(object_id):
    status, body = request(MASTER, "GET", "/api/objects/" + object_id)
    if status != 200:
        return status, None
    return status, json.loads(body)


def short_list(items, n=5):
    items = list(items)
    return ", ".join(items[:n]) + (" and %d more" % (len(items) - n) if len(items) > n else "")


def cmd_check(args):
    datanodes = args.datanodes.split(",")
    ops = load_ops(args.results)
    checks = Checks()
    acked = {op["id"]: op for op in ops if op["op"] == "put" and op["ok"]}
    deleted = {op["id"] for op in ops if op["op"] == "delete" and op["ok"]}
    maybe_deleted = {op["id"] for op in ops if op["op"] == "delete" and not op["ok"]}
    live = {i: op for i, op in acked.items() if i not in deleted and i not in maybe_deleted}
    log("%d operations: %d uploads acknowledged (%d not), %d deletes acknowledged (%d not), %d reads"
        % (len(ops), len(acked), sum(1 for op in ops if op["op"] == "put" and not op["ok"]), len(deleted),
           len(maybe_deleted), sum(1 for op in ops if op["op"] == "get")))
    checks.record(len(acked) >= args.min_acked, "the workload had at least %d uploads acknowledged" % args.min_acked,
                  "%d were" % len(acked))
    wrong_reads = [op for op in ops if op.get("wrong_bytes")]
    checks.record(not wrong_reads, "no read during the faults returned other bytes than were uploaded",
                  "%d did: %s" % (len(wrong_reads), short_list(op["id"] for op in wrong_reads)) if wrong_reads else "")

    # Every object back at R: counted on the datanodes themselves, not in the master's books.
    start = args.healed_at or time.time()
    deadline = start + args.repair_deadline
    short = dict.fromkeys(live)
    counts = {}
    while True:
        # A node that does not answer its health check holds nothing that can be read;
        # skipping it keeps a poll from waiting out a timeout per object.
        up = [d for d in datanodes if request(d, "GET", "/health", timeout=3)[0] == 200]
        for object_id in list(short):
            found = holders(object_id, up)
            counts[object_id] = found
            if len(found) >= args.replication:
                del short[object_id]
        if not short or time.time() >= deadline:
            break
        time.sleep(2)
    repaired_after = time.time() - start
    if short:
        spread = {}
        for object_id in short:
            spread[len(counts[object_id])] = spread.get(len(counts[object_id]), 0) + 1
        detail = "%d of %d objects still short after %ds (%s); e.g. %s" % (
            len(short), len(live), args.repair_deadline,
            ", ".join("%d with %d copies" % (v, k) for k, v in sorted(spread.items())), short_list(short, 3))
    else:
        detail = "all %d objects at %d copies %.0fs after the last fault healed" % (len(live), args.replication, repaired_after)
    checks.record(not short, "every acknowledged object is back at %d copies within %ds of the faults healing"
                  % (args.replication, args.repair_deadline), detail)

    # Every copy read back whole from every node that has it.
    lost, wrong, unknown, phantom = [], [], [], []
    up = [d for d in datanodes if request(d, "GET", "/health", timeout=3)[0] == 200]
    for object_id, op in sorted(live.items()):
        found = holders(object_id, up)
        good = 0
        for node in found:
            status, body = request(node, "GET", "/objects/" + object_id, timeout=30)
            if status == 200 and hashlib.sha256(body).hexdigest() == op["sha256"] and len(body) == op["size"]:
                good += 1
            elif status == 200:
                wrong.append("%s on %s" % (object_id, node))
        if good == 0:
            lost.append(object_id)
        status, info = master_view(object_id)
        if info is None or info.get("status") != "complete":
            unknown.append("%s (%s)" % (object_id, status))
        else:
            listed = {r["address"] for r in info.get("replica_nodes", [])}
            phantom.extend("%s on %s" % (object_id, a) for a in sorted(listed - set(found)))
    checks.record(not lost, "no acknowledged object is lost",
                  "%d of %d have no copy with their bytes: %s" % (len(lost), len(live), short_list(lost)) if lost else
                  "%d objects read back from every copy" % len(live))
    checks.record(not wrong, "no copy of an acknowledged object holds other bytes",
                  "%d copies do: %s" % (len(wrong), short_list(wrong)) if wrong else "")
    checks.record(not unknown, "the master knows every acknowledged object as complete",
                  "%d it does not: %s" % (len(unknown), short_list(unknown)) if unknown else "")
    checks.record(not phantom, "the master lists no copy a datanode does not have",
                  "%d listed copies are not there: %s" % (len(phantom), short_list(phantom)) if phantom else "")

    # The client's own read path, on a sample.
    sample = sorted(live)[: args.client_reads]
    failed_gets = []
    for object_id in sample:
        ok, _, err = run_aether(["get", object_id, "-o", "/tmp/chaos-check"], 120)
        if ok:
            with open("/tmp/chaos-check", "rb") as f:
                ok = hashlib.sha256(f.read()).hexdigest() == live[object_id]["sha256"]
                err = "other bytes"
        if not ok:
            failed_gets.append("%s (%s)" % (object_id, err))
    checks.record(not failed_gets, "aether get reads back %d acknowledged objects" % len(sample),
                  "%d failed: %s" % (len(failed_gets), short_list(failed_gets, 3)) if failed_gets else "")

    # Acknowledged deletes stay deleted.
    back = []
    for object_id in sorted(deleted):
        status, info = master_view(object_id)
        if status == 200 and info and info.get("status") != "deleted":
            back.append(object_id)
    checks.record(not back, "no acknowledged delete came back (%d deletes)" % len(deleted),
                  "%d did: %s" % (len(back), short_list(back)) if back else "")

    with open(os.path.join(args.results, "check.json"), "w") as f:
        json.dump({"checks": checks.results, "repair_seconds": None if short else repaired_after,
                   "live_objects": len(live)}, f)
    return 0 if all(c["ok"] for c in checks.results) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ready")
    p.add_argument("count", type=int)
    p.add_argument("--timeout", type=int, default=90)
    p = sub.add_parser("workload")
    p.add_argument("--results", required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rate", type=float, default=8.0, help="operations a second, all workers together")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--op-timeout", type=int, default=90)
    p = sub.add_parser("check")
    p.add_argument("--results", required=True)
    p.add_argument("--datanodes", required=True, help="comma-separated base URLs")
    p.add_argument("--replication", type=int, default=3)
    p.add_argument("--repair-deadline", type=int, default=90, help="seconds after --healed-at")
    p.add_argument("--healed-at", type=float, default=0, help="when the last fault healed (Unix time)")
    p.add_argument("--min-acked", type=int, default=20)
    p.add_argument("--client-reads", type=int, default=30)
    args = parser.parse_args()
    return {"ready": cmd_ready, "workload": cmd_workload, "check": cmd_check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
