#!/usr/bin/env python3
"""The chaos test's host side (deploy/chaos.sh runs it with the image built): starts a
master, N datanodes and a client container on a private Docker network, runs the
workload in the client container, injects faults one after another while it runs,
heals them, runs the checker, and prints availability during each fault and the time to
full repair. Ends with "chaos: N passed, M failed".

Faults (each on a datanode picked at random, unless it names the master):
  kill-datanode     SIGKILL the datanode's process (docker kill), start it again
  kill-master       SIGKILL the master, start it again
  pause-datanode    docker pause (a stalled node: sockets open, nothing answers), unpause
  cut-from-master   the datanode and the master cannot reach each other (blackhole
                    routes inside the datanode), everyone else still can
  cut-from-peers    the datanode and the other datanodes cannot reach each other
  isolate           docker network disconnect (off the network for everyone), reconnect
  disk-read-only    the data directory remounted read-only, then read-write again
  disk-gone         everything in the data directory deleted under the running node
                    (a lost or unmounted disk); not healed: the cluster must notice and
                    copy the node's objects elsewhere
Only this test's containers and network are touched; everything has the prefix
aether-chaos and is removed at the end (--keep leaves it up).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

PREFIX = "aether-chaos"
NETWORK = PREFIX + "-net"
MASTER = PREFIX + "-master"
CLIENT = PREFIX + "-client"
LABEL = "org.aetherstore.chaos=1"
TOKEN = "chaos-test-cluster-token-0123456789"
REPEATABLE = ["kill-datanode", "kill-master", "pause-datanode", "cut-from-master", "cut-from-peers", "isolate",
              "disk-read-only"]


def log(message):
    print(time.strftime("%H:%M:%S", time.gmtime()) + " [chaos] " + message, file=sys.stderr, flush=True)


def docker(*args, check=True, timeout=120):
    done = subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError("docker %s failed: %s" % (" ".join(args), done.stderr.strip()))
    return done.stdout.strip()


def datanode_name(n):
    return "%s-dn-%d" % (PREFIX, n)


def teardown(n_datanodes):
    names = [MASTER, CLIENT] + [datanode_name(n) for n in range(1, n_datanodes + 1)]
    # Any left by an earlier run with more datanodes carry the label.
    names += docker("ps", "-aq", "--filter", "label=" + LABEL, check=False).split()
    for name in names:
        docker("unpause", name, check=False)
        docker("rm", "-f", "-v", name, check=False)
    docker("network", "rm", NETWORK, check=False)


class Cluster:
    def __init__(self, args):
        self.args = args
        self.datanodes = [datanode_name(n) for n in range(1, args.datanodes + 1)]

    def start(self):
        a = self.args
        docker("network", "create", "--label", LABEL, NETWORK)
        common = ["--network", NETWORK, "--label", LABEL, "--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN",
                  "--security-opt", "apparmor=unconfined", "-e", "AETHER_CLUSTER_TOKEN=" + TOKEN]
        docker("run", "-d", "--name", MASTER, "--hostname", MASTER, *common,
               "-e", "AETHER_LISTEN=0.0.0.0:42100", "-e", "AETHER_REPLICATION=%d" % a.replication,
               "-e", "AETHER_DEAD_AFTER=%d" % a.dead_after, a.image, "master")
        for name in self.datanodes:
            docker("run", "-d", "--name", name, "--hostname", name, *common,
                   "-e", "AETHER_LISTEN=0.0.0.0:42101", "-e", "AETHER_NODE_ID=" + name.replace(PREFIX + "-", ""),
                   "-e", "AETHER_ADVERTISE=http://%s:42101" % name, "-e", "AETHER_MASTER=http://%s:42100" % MASTER,
                   "-e", "AETHER_HEARTBEAT_INTERVAL=1", "-e", "AETHER_INVENTORY_INTERVAL=30", a.image, "datanode")
        here = os.path.dirname(os.path.abspath(__file__))
        docker("run", "-d", "--name", CLIENT, "--hostname", CLIENT, "--network", NETWORK, "--label", LABEL,
               "--user", "root", "--no-healthcheck", "--entrypoint", "sleep", "-v", here + ":/chaos:ro", "-v", a.results + ":/results",
               "-e", "AETHER_MASTER=http://%s:42100" % MASTER, "-e", "AETHER_CLUSTER_TOKEN=" + TOKEN,
               a.image, "infinity")

    def client(self, *args, timeout=600):
        return subprocess.run(["docker", "exec", CLIENT, "python3", "/chaos/client.py"] + list(args), timeout=timeout)

    def ip(self, name):
        return docker("inspect", "-f", "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % NETWORK, name)

    def as_root(self, name, script):
        return docker("exec", "-u", "root", name, "sh", "-c", script)

    def logs(self, name, lines=15):
        done = subprocess.run(["docker", "logs", "--tail", str(lines), name], capture_output=True, text=True)
        return (done.stdout + done.stderr).strip()


# ---------------------------------------------------------------------------------------
# Faults: each returns the function that heals it (None: left for the cluster to heal).


def blackhole(cluster, victim, others):
    ips = [cluster.ip(o) for o in others]
    cluster.as_root(victim, "; ".join("ip route add blackhole %s/32" % ip for ip in ips))
    return lambda: cluster.as_root(victim, "; ".join("ip route del blackhole %s/32 || true" % ip for ip in ips))


def inject(cluster, fault, victim):
    if fault in ("kill-datanode", "kill-master"):
        docker("kill", "-s", "KILL", victim)
        return lambda: docker("start", victim)
    if fault == "pause-datanode":
        docker("pause", victim)
        return lambda: docker("unpause", victim)
    if fault == "cut-from-master":
        return blackhole(cluster, victim, [MASTER])
    if fault == "cut-from-peers":
        return blackhole(cluster, victim, [d for d in cluster.datanodes if d != victim])
    if fault == "isolate":
        docker("network", "disconnect", NETWORK, victim)
        return lambda: docker("network", "connect", NETWORK, victim)
    if fault == "disk-read-only":
        # A read-only bind mount stacked on the data directory: every path the node opens
        # from then on is read-only. Remounting the directory itself read-only is refused
        # ("mount point is busy") while the node holds its active volume open for
        # writing, which a loaded node always does; the kernel turning a failing disk
        # read-only needs no such consent. Healing detaches the top mount only (lazily:
        # the node's read handles opened through it keep it busy until they close; new
        # opens see the read-write directory beneath at once), unless a restart of the
        # container has already dropped it. The bind and the remount are two steps: a
        # file the node opens for writing through the new mount between them makes the
        # remount fail ("mount point is busy"), so the pair is undone and tried again.
        cluster.as_root(victim, "for try in 1 2 3 4 5 6 7 8 9 10; do "
                                "mount --bind /var/lib/aether /var/lib/aether || exit 1; "
                                "mount -o remount,bind,ro /var/lib/aether 2>/dev/null && exit 0; "
                                "umount -l /var/lib/aether; sleep 0.2; done; "
                                "echo 'remount stayed busy 10 times' >&2; exit 1")
        return lambda: cluster.as_root(
            victim, "if [ $(grep -c ' /var/lib/aether ' /proc/self/mountinfo) -ge 2 ]; "
                    "then umount -l /var/lib/aether; fi")
    if fault == "disk-gone":
        # The node may be writing while its files go: a second pass takes what the
        # first raced with. It must end with no object file left.
        cluster.as_root(victim, "for try in 1 2 3 4 5; do rm -rf /var/lib/aether/* 2>/dev/null; "
                                "find /var/lib/aether -type f -path '*objects*' | grep -q . || exit 0; sleep 0.2; "
                                "done; exit 1")
        return None
    raise ValueError(fault)


def schedule(args, rng):
    """The faults in order: each once, then (for a longer run) at random until the
    duration is used up; the disk that goes for good comes last."""
    per_fault = args.hold + args.gap
    faults = list(REPEATABLE)
    budget = args.duration - per_fault * (len(faults) + 1)
    while budget >= per_fault:
        faults.append(rng.choice(REPEATABLE))
        budget -= per_fault
    faults.append("disk-gone")
    return faults


# ---------------------------------------------------------------------------------------
# Report


def availability(ops, start, end):
    parts = []
    for kind in ("put", "get", "delete"):
        window = [op for op in ops if op["op"] == kind and start <= op["t0"] < end]
        ok = sum(1 for op in window if op["ok"])
        parts.append("%-6s %-9s" % (kind, "%d/%d" % (ok, len(window)) if window else "-"))
    window = [op for op in ops if start <= op["t0"] < end]
    slowest = max((op["t1"] - op["t0"] for op in window), default=0)
    return "  ".join(parts) + "  slowest %.1fs" % slowest


def load_ops(results):
    ops = []
    for name in sorted(os.listdir(results)):
        if name.startswith("ops-") and name.endswith(".jsonl"):
            with open(os.path.join(results, name)) as f:
                ops.extend(json.loads(line) for line in f if line.strip())
    return ops


def report(timeline, results, workload_end):
    ops = load_ops(results)
    log("availability (operations that succeeded / started, by when they started):")
    rows = [("before the faults", 0, timeline[0]["start"])]
    for t in timeline:
        rows.append(("%s %s (%ds)" % (t["fault"], t["victim"].replace(PREFIX + "-", ""), t["held"]), t["start"], t["healed"]))
    rows.append(("after the last heal", timeline[-1]["healed"], workload_end))
    for name, start, end in rows:
        print("    %-36s %s" % (name, availability(ops, start, end)), file=sys.stderr)
    errors = {}
    for op in ops:
        if not op["ok"]:
            # The client repeats the URL; the end of its sentence says what went wrong.
            error = op.get("error", "")
            key = "%s: %s" % (op["op"], error if len(error) <= 160 else "..." + error[-160:])
            errors[key] = errors.get(key, 0) + 1
    if errors:
        log("most frequent errors:")
        for key, count in sorted(errors.items(), key=lambda kv: -kv[1])[:8]:
            print("    %4d x %s" % (count, key), file=sys.stderr)


# ---------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True)
    parser.add_argument("--results", required=True, help="directory for the operation logs and the checker's result")
    parser.add_argument("--datanodes", type=int, default=5)
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--dead-after", type=int, default=6, help="the master's AETHER_DEAD_AFTER, seconds")
    parser.add_argument("--duration", type=int, default=0,
                        help="seconds of faults; the default (0) injects each fault once")
    parser.add_argument("--hold", type=int, default=10, help="seconds each fault lasts")
    parser.add_argument("--gap", type=int, default=5, help="seconds between faults")
    parser.add_argument("--warmup", type=int, default=10, help="seconds of workload before the first fault")
    parser.add_argument("--repair-deadline", type=int, default=90,
                        help="seconds after the faults heal by which every object must be at R copies")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="leave the containers running afterwards")
    args = parser.parse_args()
    args.results = os.path.abspath(args.results)
    os.makedirs(args.results, exist_ok=True)

    rng = random.Random(args.seed)
    cluster = Cluster(args)
    passed = failed = 0

    def result(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        log(("ok: " if ok else "NOT OK: ") + what)

    teardown(args.datanodes)
    workload = None
    try:
        log("seed %d; %d datanodes at R=%d; results in %s" % (args.seed, args.datanodes, args.replication, args.results))
        cluster.start()
        ready = cluster.client("ready", str(args.datanodes), "--timeout", "90").returncode == 0
        result(ready, "the master and %d datanodes are up on network %s" % (args.datanodes, NETWORK))
        if not ready:
            for name in [MASTER] + cluster.datanodes:
                log("%s:\n%s" % (name, cluster.logs(name)))
            return 1
        workload = subprocess.Popen(["docker", "exec", CLIENT, "python3", "/chaos/client.py", "workload",
                                     "--results", "/results", "--workers", str(args.workers),
                                     "--rate", str(args.rate), "--seed", str(args.seed)])
        time.sleep(args.warmup)
        timeline = []
        gone = set()
        faults = schedule(args, rng)
        log("faults: " + ", ".join(faults))
        for fault in faults:
            if fault == "kill-master":
                victim = MASTER
            else:
                victim = rng.choice([d for d in cluster.datanodes if d not in gone])
            start = time.time()
            log("fault: %s on %s" % (fault, victim))
            try:
                heal = inject(cluster, fault, victim)
            except RuntimeError as e:
                result(False, "the nemesis could inject %s on %s (%s)" % (fault, victim, e))
                continue
            if heal is None:
                gone.add(victim)
            time.sleep(args.hold)
            if heal is not None:
                try:
                    heal()
                except RuntimeError as e:
                    result(False, "the nemesis could heal %s on %s (%s)" % (fault, victim, e))
                log("healed: %s on %s" % (fault, victim))
            timeline.append({"fault": fault, "victim": victim, "start": start, "healed": time.time(),
                             "held": round(time.time() - start)})
            time.sleep(args.gap)
        result(True, "the nemesis injected and healed %d faults" % len(timeline))
        with open(os.path.join(args.results, "timeline.json"), "w") as f:
            json.dump(timeline, f)
        open(os.path.join(args.results, "stop"), "w").close()
        try:
            workload.wait(timeout=180)
        except subprocess.TimeoutExpired:
            workload.kill()
        workload_end = time.time()
        result(workload.returncode == 0, "the workload ran to its end")
        report(timeline, args.results, workload_end)

        log("checking (every object must be at %d copies within %ds)" % (args.replication, args.repair_deadline))
        cluster.client("check", "--results", "/results", "--replication", str(args.replication),
                       "--repair-deadline", str(args.repair_deadline), "--healed-at", str(timeline[-1]["healed"]),
                       "--datanodes", ",".join("http://%s:42101" % d for d in cluster.datanodes),
                       timeout=args.repair_deadline + 900)
        try:
            with open(os.path.join(args.results, "check.json")) as f:
                check = json.load(f)
        except (OSError, ValueError):
            result(False, "the checker wrote its results")
            return 1
        for c in check["checks"]:
            result(c["ok"], c["what"] + (" -- " + c["detail"] if c["detail"] else ""))
        repair = check.get("repair_seconds")
        log("time to full repair: %s after the last fault healed" % ("%.0fs" % repair if repair is not None else
                                                                       "not reached %ds" % args.repair_deadline))
        if failed:
            for name in [MASTER] + cluster.datanodes:
                log("last lines of %s:\n%s" % (name, cluster.logs(name, 8)))
        return 0 if failed == 0 else 1
    except Exception as e:  # noqa: BLE001 -- any failure of the harness is one failed check
        result(False, "the chaos harness ran without an error (%s: %s)" % (type(e).__name__, e))
        return 1
    finally:
        if workload is not None and workload.poll() is None:
            workload.kill()
        if args.keep:
            log("--keep: leaving %s, %s and the datanodes running" % (MASTER, CLIENT))
        else:
            teardown(args.datanodes)
        print("\nchaos: %d passed, %d failed" % (passed, failed), flush=True)


if __name__ == "__main__":
    sys.exit(main())
