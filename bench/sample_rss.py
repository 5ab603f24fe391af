#!/usr/bin/env python3
"""Runs a command while sampling the resident memory (VmRSS) of some processes every
--interval seconds; prints the command's standard output, then one JSON line with each
process's largest sample in MiB. The command bounds the run (and --timeout bounds it too).

Usage: sample_rss.py --pids 123,456 [--interval 0.1] [--timeout 600] -- COMMAND ARGS..
"""
import argparse
import json
import subprocess
import sys
import time


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pids", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    pids = [int(p) for p in args.pids.split(",") if p]
    peak = {pid: 0 for pid in pids}
    before = {pid: rss_kib(pid) or 0 for pid in pids}
    samples = 0
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    deadline = time.time() + args.timeout
    while child.poll() is None and time.time() < deadline:
        for pid in pids:
            peak[pid] = max(peak[pid], rss_kib(pid) or 0)
        samples += 1
        time.sleep(args.interval)
    if child.poll() is None:
        child.kill()
    output, _ = child.communicate()
    sys.stdout.write(output.decode())
    result = {
        "exit_code": child.returncode,
        "samples": samples,
        "rss_before_mib": {str(pid): round(kib / 1024, 1) for pid, kib in before.items()},
        "rss_peak_mib": {str(pid): round(kib / 1024, 1) for pid, kib in peak.items()},
        "max_rss_peak_mib": round(max(peak.values(), default=0) / 1024, 1),
    }
    print(json.dumps(result))
    return 0 if child.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
