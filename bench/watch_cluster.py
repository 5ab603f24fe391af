#!/usr/bin/env python3
"""Polls a master's GET /api/cluster until a condition holds, with a deadline.

--until healthy:  every object at full strength and --nodes nodes alive.
--until repaired: one node dead and no object under-replicated; prints, as JSON, the
                  seconds from --since (a Unix time, e.g. the moment of a SIGKILL) until
                  the master first reported the node dead (detection) and until repair.
"""
import argparse
import json
import sys
import time
import urllib.request


def cluster(master):
    with urllib.request.urlopen(master + "/api/cluster", timeout=10) as answer:
        return json.load(answer)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("master")
    parser.add_argument("--until", choices=["healthy", "repaired"], required=True)
    parser.add_argument("--nodes", type=int, default=0)
    parser.add_argument("--since", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--upload", help="JSON report of the upload, copied into the result")
    parser.add_argument("--objects", type=int)
    parser.add_argument("--size")
    parser.add_argument("--commit", help="the commit measured, copied into the result")
    parser.add_argument("--master-args", help="the master's flags, copied into the result")
    args = parser.parse_args()

    since = args.since if args.since is not None else time.time()
    deadline = time.time() + args.timeout
    detected = None
    mixed_answers = 0
    max_under = 0
    polls = 0
    slowest_poll = 0.0
    last = None
    while time.time() < deadline:
        asked = time.time()
        try:
            last = cluster(args.master)
        except OSError as error:
            print(f"poll failed: {error}", file=sys.stderr)
            time.sleep(args.interval)
            continue
        answered = time.time()
        polls += 1
        slowest_poll = max(slowest_poll, answered - asked)
        if args.until == "healthy":
            if last["under_replicated"] == 0 and last["nodes_alive"] >= args.nodes and last["nodes_dead"] == 0:
                print(json.dumps(last))
                return 0
        else:
            if last["nodes_dead"] >= 1 and detected is None:
                detected = asked - since
                # The answer that first shows the node dead may mix states from before
                # and after the change (its counts are separate statements), so it
                # cannot say the repair is done; only answers asked for afterwards can.
                if last["under_replicated"] == 0:
                    mixed_answers += 1
                continue
            if detected is not None and last["under_replicated"] > 0:
                max_under = max(max_under, last["under_replicated"])
            if last["nodes_dead"] == 1 and last["under_replicated"] == 0 and detected is not None:
                result = {
                    "commit": args.commit,
                    "master_args": args.master_args,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "objects": args.objects,
                    "size": args.size,
                    "replication": 3,
                    "datanodes": 4,
                    "detection_secs": round(detected, 2),
                    "repair_secs": round(asked - since, 2),
                    "repair_after_detection_secs": round(asked - since - detected, 2),
                    "max_under_replicated_seen": max_under,
                    "mixed_first_answer": mixed_answers > 0,
                    "polls": polls,
                    "slowest_poll_secs": round(slowest_poll, 3),
                    "cluster": last,
                }
                if args.upload:
                    with open(args.upload) as f:
                        upload = json.load(f)
                    result["upload_ops_per_sec"] = round(upload["ops_per_sec"], 1)
                    result["upload_errors"] = upload["errors"]
                print(json.dumps(result))
                return 0
        time.sleep(args.interval)
    print(f"timed out after {args.timeout} s waiting for {args.until}; last answer: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
