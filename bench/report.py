#!/usr/bin/env python3
"""Turns the JSON pieces bench/run.sh collected into the results: every figure, the
machine limit it is compared with, the ratio, the issue's target and whether it is met.
Writes RESULTS/results.json and RESULTS/results.md (the table, then the same JSON) and
prints the table.
"""
import argparse
import json
import os
import sys
import time

MiB = 1 << 20


def load(out, name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return None if data.get("failed") else data


def load_last_line(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None, None
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    parsed = [json.loads(l) for l in lines]
    report = next((p for p in parsed if "workload" in p), None)
    return report, parsed[-1] if parsed else None


class Table:
    def __init__(self):
        self.rows = []

    def add(self, section, figure, value, unit, limit=None, limit_name=None, target=None, met=None, ratio=None):
        if ratio is None and value is not None and limit:
            ratio = value / limit
        self.rows.append(
            {
                "section": section,
                "figure": figure,
                "value": value,
                "unit": unit,
                "limit": limit,
                "limit_name": limit_name,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )


def fmt(value, unit=""):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip()


def seaweedfs_rows(out, t):
    """Issue 12's table: 4 KiB objects on SeaweedFS (`weed benchmark -fsync`) and on
    AetherStore, measured interleaved by bench/seaweedfs.sh in rounds: the ratio of the
    rounds' mean rates, and each round's."""
    s = "SeaweedFS side by side (4 KiB)"
    disk = load(out, "sw-disk") or {}
    appends16 = disk.get("fsync_4k_per_sec_16")
    t.add(s, "fsync'd 4 KiB appends, 16 writers (same run)", appends16, "ops/s")
    for op, r, c, target in (
        ("put", 1, 1, 1.5), ("put", 1, 16, 2.0), ("put", 3, 1, 1.5), ("put", 3, 16, 2.0),
        ("get", 1, 1, 1.5), ("get", 1, 16, 2.0), ("get", 3, 1, 1.5), ("get", 3, 16, 2.0),
    ):
        weeds = [(w or {}).get(f"{op}_per_sec") for w in rounds(out, f"sw-weed-r{r}-c{c}")]
        ourses = [o or {} for o in rounds(out, f"sw-aether-r{r}-{op}-c{c}")]
        each = [(o.get("ops_per_sec"), w) for o, w in zip(ourses, weeds)]
        both = [(v, w) for v, w in each if v is not None and w]
        v = mean([v for v, _ in both])
        weed = mean([w for _, w in both])
        ratio = v / weed if v is not None and weed else None
        clients = "1 client" if c == 1 else f"{c} clients"
        repl = "000" if r == 1 else "002"
        t.add(s, f"{op.upper()} 4 KiB, R={r}, {clients}", v, "ops/s", weed, f"SeaweedFS {repl} -fsync",
              f">= {target}x", None if ratio is None else ratio >= target, ratio)
        if len(each) > 1:
            for k, (ours_k, weed_k) in enumerate(each, 1):
                t.add(s, f"  round {k} of {len(each)}", ours_k, "ops/s", weed_k, f"SeaweedFS {repl} -fsync")
        cpu = mean([o["cpu_ms_per_op"] for o in ourses if o.get("cpu_ms_per_op") is not None])
        if op == "put" and cpu is not None:
            t.add(s, f"  CPU per PUT (client + master + datanodes)", cpu, "ms")
        if op == "put" and c == 16 and v is not None and appends16:
            t.add(s, f"  same, against fsync'd appends, 16 writers", v, "ops/s", appends16 / r,
                  "appends" if r == 1 else "appends / 3")


def rounds(out, base):
    """The rounds of one seaweedfs.sh run, BASE-1, BASE-2, ..., each loaded (None where a
    run failed); a run of before rounds (BASE alone) is one round."""
    found = []
    while os.path.exists(os.path.join(out, f"{base}-{len(found) + 1}.json")):
        found.append(load(out, f"{base}-{len(found) + 1}"))
    if not found and os.path.exists(os.path.join(out, base + ".json")):
        found.append(load(out, base))
    return found


def mean(values):
    return sum(values) / len(values) if values else None


def s3_rows(out, t):
    """Issue 11's table: the S3 path with boto3 against AetherStore's gateway (R=3), SeaweedFS's
    S3 gateway (002, fsync) and a server that does nothing, measured interleaved by
    bench/s3.sh; the gateway's memory through 1 GiB; listing at two bucket sizes."""
    s = "S3 with boto3 (R=3, fsync)"
    ours, weed, null = (load(out, n) or {} for n in ("s3-aether", "s3-seaweedfs", "s3-null"))
    for name, label, unit in (
        ("put_4k_t1", "PUT 4 KiB, 1 thread", "ops/s"), ("put_4k_t8", "PUT 4 KiB, 8 threads", "ops/s"),
        ("get_4k_t1", "GET 4 KiB, 1 thread", "ops/s"), ("put_64m_t1", "PUT 64 MiB, 1 thread", "MB/s"),
        ("get_64m_t1", "GET 64 MiB, 1 thread", "MB/s"),
    ):
        key = "mb_per_sec" if unit == "MB/s" else "ops_per_sec"
        v, w, n = ((r.get(name) or {}).get(key) for r in (ours, weed, null))
        if (ours.get(name) or {}).get("errors"):
            t.add(s, f"  {label}: errors", ours[name]["errors"], "", target="0", met=False)
        ratio = v / w if v is not None and w else None
        t.add(s, label, v, unit, w, "SeaweedFS S3, 002, fsync", ">= 1x", None if ratio is None else ratio >= 1, ratio)
        native = load(out, "s3-native-" + name.replace("_", "-")) if unit == "ops/s" else None
        if native:
            t.add(s, f"  same cluster, its own API (aether bench, no gateway)", native.get("ops_per_sec"), unit)
        t.add(s, f"  same client, a server that does nothing", n, unit, None, None)
        if v is not None and n:
            t.add(s, f"  AetherStore against that (the client's limit)", v, unit, n, "nothing")
    rss = load_last_line(out, "s3-gateway-rss-1g.jsonl")[1] or {}
    hwm = (load(out, "s3-gateway-hwm") or {}).get("gateway_hwm_mib")
    if hwm is not None:
        t.add(s, "Gateway peak RSS through 1 GiB up and down (VmHWM)", hwm, "MiB", None, None, "< 100 MiB", hwm < 100)
    if rss:
        t.add(s, "  highest sampled RSS", rss.get("max_rss_peak_mib"), "MiB")
    scales = sorted(int(n[len("s3-listing-"):-5]) for n in os.listdir(out) if n.startswith("s3-listing-") and n.endswith(".json"))
    base = None
    for n in scales:
        r = load(out, f"s3-listing-{n}")
        if not r:
            t.add(s, f"ListObjectsV2, {n:,} keys", None, "ms")
            continue
        p99 = r["page_ms"]["p99"]
        t.add(s, f"ListObjectsV2 page of 1,000, {n:,} keys: p50", r["page_ms"]["p50"], "ms")
        if base is None:
            base = p99
            t.add(s, f"ListObjectsV2 page of 1,000, {n:,} keys: p99", p99, "ms")
        else:
            ratio = p99 / base if base else None
            t.add(s, f"ListObjectsV2 page of 1,000, {n:,} keys: p99", p99, "ms", base, f"p99 at {scales[0]:,}",
                  "<= 2x", None if ratio is None else ratio <= 2, ratio)
        full = r.get("full_listing") or {}
        t.add(s, f"Full listing of {n:,} keys ({full.get('pages', '?')} pages)", full.get("secs"), "s")
        t.add(s, f"  boto3's first page (its XML parsing included)", r.get("boto3_first_page_ms"), "ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--elapsed", type=int, default=0)
    parser.add_argument("--quick", default="0")
    parser.add_argument("--only-seaweedfs", action="store_true", help="bench/seaweedfs.sh run alone")
    parser.add_argument("--only-s3", action="store_true", help="bench/s3.sh run alone")
    args = parser.parse_args()
    out = args.out

    env = load(out, "env") or {}
    disk = load(out, "disk") or {}
    loop = [load(out, "loopback-1"), load(out, "loopback-2")]
    buffered = disk.get("seq_write_mb_per_sec")
    direct = disk.get("seq_write_direct_mb_per_sec")
    # The disk's limit is what it takes by the fastest way measured.
    seq = max((v for v in (buffered, direct) if v), default=None)
    fsync4k = disk.get("fsync_4k_per_sec")
    loopback = max((l["mb_per_sec"] for l in loop if l), default=None)

    t = Table()
    if args.only_seaweedfs:
        seaweedfs_rows(out, t)
        return write(t, env, out, args)
    if args.only_s3:
        s3_rows(out, t)
        return write(t, env, out, args)
    s = "Machine limits"
    t.add(s, "Sequential write, 1 GiB buffered then fsync (median of 3)", buffered, "MB/s")
    t.add(s, "Sequential write, 1 GiB O_DIRECT then fsync (the device)", direct, "MB/s")
    t.add(s, "fsync'd 4 KiB appends, 1 writer", fsync4k, "ops/s")
    t.add(s, "fsync'd 4 KiB appends, 16 writers", disk.get("fsync_4k_per_sec_16"), "ops/s")
    t.add(s, "4 KiB file create+fsync+link+dir fsync, 1 writer", disk.get("create_4k_per_sec"), "ops/s")
    t.add(s, "4 KiB file create+fsync+link+dir fsync, 16 writers", disk.get("create_4k_per_sec_16"), "ops/s")
    files_1m = disk.get("create_1m_mb_per_sec_12")
    t.add(s, "1 MiB object files as a datanode writes them, 12 writers", files_1m, "MB/s")
    t.add(s, "1 MiB O_DIRECT appends + fdatasync to one file, 12 writers", disk.get("append_1m_mb_per_sec_12"), "MB/s")
    appends_1m = disk.get("append_1m_group_mb_per_sec_12")
    t.add(s, "  same, the fdatasyncs shared (group commit, as volumes do)", appends_1m, "MB/s")
    for l in loop:
        if l:
            t.add(s, f"Loopback TCP, {l['streams']} stream(s)", l["mb_per_sec"], "MB/s")

    def get(name, key="ops_per_sec"):
        r = load(out, name)
        return (r or {}).get(key), r

    for r in (1, 3):
        s = f"Cluster, R={r}"
        seq_r = seq / r if seq else None
        v, _ = get(f"r{r}-put-4k-t1")
        t.add(s, "PUT 4 KiB, 1 client", v, "ops/s", fsync4k, "fsync'd 4 KiB writes/s")
        v, _ = get(f"r{r}-put-4k-t16")
        if r == 1:
            met = None if v is None or not fsync4k else v >= fsync4k
            t.add(s, "PUT 4 KiB, 16 clients", v, "ops/s", fsync4k, "fsync'd 4 KiB writes/s", ">= 1x", met)
        else:
            t.add(s, "PUT 4 KiB, 16 clients", v, "ops/s", fsync4k / 3 if fsync4k else None, "fsync'd 4 KiB writes/s / 3")
        v, _ = get(f"r{r}-get-4k-t1")
        t.add(s, "GET 4 KiB, 1 client", v, "ops/s")
        v, _ = get(f"r{r}-get-4k-t16")
        t.add(s, "GET 4 KiB, 16 clients", v, "ops/s", None, None, ">= 10,000 ops/s", None if v is None else v >= 10000)
        for size, threads in (("1m", 4), ("64m", 2)):
            label = "1 MiB" if size == "1m" else "64 MiB"
            v, _ = get(f"r{r}-put-{size}-t{threads}", "mb_per_sec")
            if r == 3:
                ratio = v / seq_r if v is not None and seq_r else None
                t.add(s, f"PUT {label}, {threads} clients", v, "MB/s", seq_r, "seq. write / 3", ">= 80%",
                      None if ratio is None else ratio >= 0.8)
                if buffered and seq != buffered:
                    t.add(s, f"  same, against buffered writes", v, "MB/s", buffered / 3, "buffered seq. write / 3")
                if size == "1m" and files_1m:
                    t.add(s, "  same, against 1 MiB object files", v, "MB/s", files_1m / 3, "1 MiB files, 12 writers / 3")
                if size == "1m" and appends_1m:
                    t.add(s, "  same, against 1 MiB appends with group commit (the best records could do)", v, "MB/s",
                          appends_1m / 3, "1 MiB group-commit appends, 12 writers / 3")
            else:
                t.add(s, f"PUT {label}, {threads} clients", v, "MB/s", seq, "seq. write")
            v, _ = get(f"r{r}-get-{size}-t{threads}", "mb_per_sec")
            near = (load(out, f"loopback-near-r{r}-get-{size}-t{threads}") or {}).get("mb_per_sec")
            limit, limit_name = (near, "loopback TCP just before") if near else (loopback, "loopback TCP")
            ratio = v / limit if v is not None and limit else None
            t.add(s, f"GET {label}, {threads} clients", v, "MB/s", limit, limit_name, ">= 50%",
                  None if ratio is None else ratio >= 0.5)
            if near and loopback:
                t.add(s, "  same, against loopback at the start of the run", v, "MB/s", loopback, "loopback TCP")
        v, _ = get(f"r{r}-init-t16")
        t.add(s, "Metadata: init (durable write), 16 clients", v, "ops/s", None, None, ">= 10,000 ops/s",
              None if v is None else v >= 10000)
        v, _ = get(f"r{r}-lookup-t16")
        t.add(s, "Metadata: lookup GET /api/objects/{id}, 16 clients", v, "ops/s", None, None, ">= 10,000 ops/s",
              None if v is None else v >= 10000)
        v, _ = get(f"r{r}-create0-t16")
        t.add(s, "Metadata: init + 0-byte chained PUT + complete, 16 clients", v, "objects/s")
        if v is not None:
            # init and complete are one durable write each; the datanodes' replica reports
            # come in batches and are mostly recognised with a read (complete was first).
            t.add(s, "  = master durable writes (init + complete)", v * 2, "writes/s")

    s = "Datanode memory"
    report, rss = load_last_line(out, "datanode-rss-1g.jsonl")
    if report:
        t.add(s, "PUT 1 GiB at R=3, 1 client", report["mb_per_sec"], "MB/s", seq / 3 if seq else None, "seq. write / 3")
    peak = rss.get("max_rss_peak_mib") if rss and "max_rss_peak_mib" in rss else None
    t.add(s, "Datanode peak RSS during the 1 GiB upload", peak, "MiB", None, None, "< 100 MiB",
          None if peak is None else peak < 100)
    master_rss = load(out, "cluster-master-rss") or {}
    t.add(s, "Master RSS after the cluster runs (peak)", master_rss.get("master_hwm_mib"), "MiB")

    s = "Master scaling"
    scales = sorted(
        int(f[len("scaling-"):-len(".json")]) for f in os.listdir(out) if f.startswith("scaling-") and f.endswith(".json")
    )
    base = {}
    for n in scales:
        sc = load(out, f"scaling-{n}") or {}
        one = load(out, f"lookup-{n}-t1") or {}
        many = load(out, f"lookup-{n}-t16") or {}
        p99_1 = one.get("latency_ms", {}).get("p99")
        p99_16 = many.get("latency_ms", {}).get("p99")
        if not base:
            base = {"p99_1": p99_1, "p99_16": p99_16}
        label = f"{n:,} objects"
        t.add(s, f"{label}: lookup p50, 1 client", one.get("latency_ms", {}).get("p50"), "ms")
        for key, clients, p99 in (("p99_1", "1 client", p99_1), ("p99_16", "16 clients", p99_16)):
            figure = f"{label}: lookup p99, {clients}"
            if n == scales[0] or not base.get(key) or p99 is None:
                t.add(s, figure, p99, "ms")
                continue
            ratio = p99 / base[key]
            target = n == 1_000_000
            t.add(s, figure, p99, "ms", base[key], f"p99 at {scales[0]:,}",
                  "<= 2x" if target else None, (ratio <= 2) if target else None, ratio)
        t.add(s, f"{label}: lookups, 16 clients", many.get("ops_per_sec"), "ops/s")
        rss = sc.get("rss_mib")
        t.add(s, f"{label}: master RSS after lookups", rss, "MiB", None, None,
              "< 256 MiB" if n == 1_000_000 else None, (rss < 256) if n == 1_000_000 and rss is not None else None)
        t.add(s, f"{label}: database size", sc.get("db_mib"), "MiB")
        secs = sc.get("cluster_status_secs")
        t.add(s, f"{label}: one GET /api/cluster", secs * 1000 if secs is not None else None, "ms")

    if any(name.startswith("sw-") for name in os.listdir(out)):
        seaweedfs_rows(out, t)
    if any(name.startswith("s3-") for name in os.listdir(out)):
        s3_rows(out, t)
    return write(t, env, out, args)


def write(t, env, out, args):
    lines = []
    lines.append("| Section | Figure | Value | Limit | Ratio | Target | Result |")
    lines.append("| --- | --- | ---: | --- | ---: | --- | --- |")
    for row in t.rows:
        limit = f"{fmt(row['limit'])} ({row['limit_name']})" if row["limit"] is not None and row["limit_name"] else ""
        ratio = f"{row['ratio'] * 100:.0f}%" if row["ratio"] is not None and row["limit_name"] else ""
        if row["ratio"] is not None and row["limit_name"] and (
            row["limit_name"].startswith("p99") or row["limit_name"].startswith("SeaweedFS") or row["limit_name"] == "nothing"
        ):
            ratio = f"{row['ratio']:.2f}x"
        result = "" if row["met"] is None else ("met" if row["met"] else "**missed**")
        lines.append(
            f"| {row['section']} | {row['figure']} | {fmt(row['value'], row['unit'])} | {limit} | {ratio} "
            f"| {row['target'] or ''} | {result} |"
        )
    table = "\n".join(lines)

    pieces = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".json"):
            with open(os.path.join(out, name)) as f:
                pieces[name[:-5]] = json.load(f)
        elif name.endswith(".jsonl"):
            pieces[name[:-6]] = [json.loads(l) for l in open(os.path.join(out, name)) if l.strip()]
    env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    env["elapsed_secs"] = args.elapsed
    env["quick"] = args.quick == "1"
    everything = {"env": env, "rows": t.rows, "raw": pieces}

    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "results.json"), "w") as f:
        json.dump(everything, f, indent=1)
    missed = [r for r in t.rows if r["met"] is False]
    met = [r for r in t.rows if r["met"] is True]
    header = (
        f"# AetherStore benchmark results\n\n"
        f"Run {env.get('started', '?')} to {env['finished']} ({args.elapsed} s) on {env.get('host_cpus', '?')} CPUs, "
        f"{env.get('mem_gib', '?')} GiB, kernel {env.get('kernel', '?')}, commit {env.get('commit', '?')}; "
        f"load average {' '.join(env.get('loadavg_start', []))} at the start, {' '.join(env['loadavg_end'])} at the end"
        f"{' (quick run: short timings)' if env['quick'] else ''}. Data and disk measurements in {env.get('dir', '?')}. "
        f"MB = 10^6 bytes. Targets: {len(met)} met, {len(missed)} missed.\n\n"
    )
    with open(os.path.join(args.results, "results.md"), "w") as f:
        f.write(header + table + "\n\n## All figures (JSON)\n\n```json\n" + json.dumps(everything, indent=1) + "\n```\n")
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
