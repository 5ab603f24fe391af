#!/usr/bin/env bash
# The benchmark suite: measures this machine's limits, then AetherStore on it, and writes
# every figure with its ratio to the matching limit into one results file (Markdown table
# plus the JSON), and prints the table. Bounded: about 5 minutes on 2 cores, plus 3 to 5
# for SeaweedFS side by side (bench/seaweedfs.sh; BENCH_SEAWEEDFS=0 skips it).
#
#   bench/run.sh               # everything
#   BENCH_QUICK=1 bench/run.sh # shorter runs and 100k objects at most (a smoke run; its
#                              # results go to target/bench/quick-results)
#
# Environment:
#   BENCH_DIR      work directory on the data disk (default target/bench); the cluster's
#                  data and the disk measurements live here, logs in $BENCH_DIR/logs
#   BENCH_RESULTS  where the results go (default bench/results)
#   BENCH_SECONDS  seconds per timed run (default 5)
#
# Needs: cargo (a release build is made), python3, curl. Everything listens on 127.0.0.1
# and everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

QUICK=${BENCH_QUICK:-0}
DIR=${BENCH_DIR:-target/bench}
RESULTS=${BENCH_RESULTS:-bench/results}
SECS=${BENCH_SECONDS:-5}
SCALES="10000 100000 1000000"
if [[ $QUICK == 1 ]]; then
  RESULTS=${BENCH_RESULTS:-$DIR/quick-results}
  SECS=${BENCH_SECONDS:-1}
  SCALES="10000 100000"
fi
LOGS=$DIR/logs
OUT=$DIR/out
STARTED=$SECONDS

# ext4 without a journal (this machine's disk) skips inodes freed in the last minutes
# one by one when it allocates new ones (the kernel's recently_deleted()), so files
# created right after tens of thousands were deleted cost many times the CPU. The suite
# therefore never deletes between measurements: old data is moved aside and deleted
# once the results are written. (Starting a second run right after one ends still
# meets the first one's deletions.)
TRASH=$DIR/trash
trash() {
  local d
  mkdir -p "$TRASH"
  for d in "$@"; do
    if [[ -e $d ]]; then mv "$d" "$TRASH/$(date +%s%N)-$(basename "$d")"; fi
  done
}

trap bench_cleanup EXIT
for d in master datanode-1 datanode-2 datanode-3 scaling; do trash "${DIR:?}/$d"; done
rm -rf "$LOGS" "$OUT"
mkdir -p "$LOGS" "$OUT" "$RESULTS"

# Since nothing is deleted before the end, a full run holds about 45 GB at its peak. A
# disk that fills midway fails the later phases with errors that do not say so (the
# SeaweedFS runs, the gateway's 1 GiB round trip, the populated databases), so a run
# without the room does not start.
NEED_GB=$([[ $QUICK == 1 ]] && echo 10 || echo 60)
FREE_GB=$(($(df -Pk "$DIR" | awk 'NR==2 {print $4}') / 1024 / 1024))
if ((FREE_GB < NEED_GB)); then
  log "only $FREE_GB GB free under $DIR; a run needs $NEED_GB GB (an earlier run's leftovers in $TRASH can go; BENCH_DIR chooses another disk)"
  exit 1
fi

log "building the release binary"
cargo build --release --quiet
write_env "$OUT/env.json" "$DIR"

# run_bench NAME ARGS..: one `aether bench` run against the cluster, its JSON report in
# $OUT/NAME.json. A failed run is recorded as such and the suite goes on.
run_bench() {
  local name=$1
  shift
  if "$AETHER" bench "$@" --master "$MASTER_URL" --json >"$OUT/$name.json" 2>"$LOGS/bench-$name.err"; then
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  %-22s %10.1f ops/s %8.1f MB/s  p99 %.2f ms  errors %d" % (sys.argv[2], r["ops_per_sec"], r["mb_per_sec"], r["latency_ms"]["p99"], r["errors"]))' \
      "$OUT/$name.json" "$name" >&2
  else
    log "  $name FAILED: $(tail -c 300 "$LOGS/bench-$name.err")"
    printf '{"failed": true, "error": %s}\n' "$(tail -c 300 "$LOGS/bench-$name.err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" \
      >"$OUT/$name.json"
  fi
}

# ---- 1. The machine's limits --------------------------------------------------------
log "machine limits: disk (on $(df -P "$DIR" | awk 'NR==2 {print $1 " mounted at " $6}'))"
python3 bench/disk.py --dir "$DIR" --seconds "$([[ $QUICK == 1 ]] && echo 1 || echo 3)" --keep >"$OUT/disk.json"
cat "$OUT/disk.json" >&2
trash "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["work"])' "$OUT/disk.json")"
log "machine limits: loopback TCP"
"$AETHER" bench loopback --threads 1 --duration 3 --json >"$OUT/loopback-1.json"
"$AETHER" bench loopback --threads 2 --duration 3 --json >"$OUT/loopback-2.json"
cat "$OUT/loopback-1.json" "$OUT/loopback-2.json" >&2

# ---- 2. A local cluster: master + 3 datanodes -------------------------------------------
log "starting a master and 3 datanodes"
start_master master "$DIR/master" --replication 3
DATANODE_PIDS=()
for i in 1 2 3; do
  start_datanode "datanode-$i" "$DIR/datanode-$i"
  DATANODE_PIDS+=("$DATANODE_PID")
done
CLUSTER_MASTER_PID=$MASTER_PID
wait_for_nodes 3 60

# loopback_near NAME: loopback TCP with 2 streams again, right before the GET run NAME,
# which is compared with it: this machine's CPU speed drifts by tens of percent within a
# run, so the figure measured minutes earlier at the start is not the same machine.
loopback_near() {
  "$AETHER" bench loopback --threads 2 --duration 2 --json >"$OUT/loopback-near-$1.json"
}

for r in 1 3; do
  log "R=$r: small objects"
  run_bench "r$r-put-4k-t1" put --size 4K --threads 1 --replication $r --duration "$SECS"
  run_bench "r$r-put-4k-t16" put --size 4K --threads 16 --replication $r --duration "$SECS"
  run_bench "r$r-get-4k-t1" get --size 4K --threads 1 --replication $r --duration "$SECS" --working-set 1000
  run_bench "r$r-get-4k-t16" get --size 4K --threads 16 --replication $r --duration "$SECS" --working-set 1000
  log "R=$r: large objects"
  run_bench "r$r-put-1m-t4" put --size 1M --threads 4 --replication $r --duration "$SECS"
  loopback_near "r$r-get-1m-t4"
  run_bench "r$r-get-1m-t4" get --size 1M --threads 4 --replication $r --duration "$SECS" --working-set 64
  run_bench "r$r-put-64m-t2" put --size 64M --threads 2 --replication $r --duration "$((SECS * 2))"
  loopback_near "r$r-get-64m-t2"
  run_bench "r$r-get-64m-t2" get --size 64M --threads 2 --replication $r --duration "$SECS" --working-set 4
  log "R=$r: metadata"
  run_bench "r$r-init-t16" init --size 4K --threads 16 --replication $r --duration "$SECS"
  run_bench "r$r-lookup-t16" lookup --size 4K --threads 16 --replication $r --duration "$SECS" --working-set 1000
  run_bench "r$r-create0-t16" put --size 0 --threads 16 --replication $r --duration "$SECS"
done

log "datanode memory during a 1 GiB upload at R=3"
python3 bench/sample_rss.py --pids "$(IFS=,; echo "${DATANODE_PIDS[*]}")" --timeout 600 -- \
  "$AETHER" bench put --size 1G --count 1 --threads 1 --replication 3 --master "$MASTER_URL" --json \
  >"$OUT/datanode-rss-1g.jsonl" || log "the 1 GiB upload failed: $(cat "$OUT/datanode-rss-1g.jsonl")"
tail -1 "$OUT/datanode-rss-1g.jsonl" >&2
echo "{\"master_rss_mib\": $(($(rss_kib "$CLUSTER_MASTER_PID") / 1024)), \"master_hwm_mib\": $(($(hwm_kib "$CLUSTER_MASTER_PID") / 1024))}" \
  >"$OUT/cluster-master-rss.json"

bench_cleanup
trash "${DIR:?}/datanode-1" "${DIR:?}/datanode-2" "${DIR:?}/datanode-3"

# ---- 2b. SeaweedFS side by side (issue 12): 4 KiB objects on both, interleaved ---------
if [[ ${BENCH_SEAWEEDFS:-1} == 1 ]]; then
  log "SeaweedFS side by side"
  SW_OUT=$OUT BENCH_DIR=$DIR SW_N=$([[ $QUICK == 1 ]] && echo 2000 || echo 10000) \
    SW_ROUNDS=$([[ $QUICK == 1 ]] && echo 1 || echo 2) bash bench/seaweedfs.sh ||
    log "the SeaweedFS comparison failed; see $LOGS"
fi

# ---- 2c. The S3 path with boto3 (issue 11): AetherStore, SeaweedFS, nothing; listing -----
if [[ ${BENCH_S3:-1} == 1 ]]; then
  log "S3 with boto3"
  S3_OUT=$OUT BENCH_DIR=$DIR BENCH_QUICK=$QUICK bash bench/s3.sh || log "the S3 benchmark failed; see $LOGS"
fi

# ---- 3. How the master's cost grows with the objects it knows --------------------------
SCALING=$DIR/scaling
for n in $SCALES; do
  log "scaling: populating the master's database to $n objects (master stopped)"
  "$AETHER" bench populate --data "$SCALING" --objects "$n" --replication 3 --json >"$OUT/populate-$n.json"
  start_master "master-$n" "$SCALING" --dead-after 3600
  run_bench "lookup-$n-t1" lookup --populated "$n" --threads 1 --duration "$SECS"
  run_bench "lookup-$n-t16" lookup --populated "$n" --threads 16 --duration "$SECS"
  # /api/cluster counts every object: how long one answer takes at this size.
  cluster_secs=$(curl -fsS -o /dev/null -w '%{time_total}' --max-time 120 "$MASTER_URL/api/cluster" || echo null)
  echo "{\"objects\": $n, \"rss_mib\": $(($(rss_kib "$MASTER_PID") / 1024)), \"hwm_mib\": $(($(hwm_kib "$MASTER_PID") / 1024)), \"db_mib\": $(du -sm "$SCALING" | cut -f1), \"cluster_status_secs\": $cluster_secs}" \
    >"$OUT/scaling-$n.json"
  cat "$OUT/scaling-$n.json" >&2
  bench_cleanup
done
trash "$SCALING"

# ---- 4. The results -------------------------------------------------------------------
log "suite done in $((SECONDS - STARTED)) s; writing results"
python3 bench/report.py --out "$OUT" --results "$RESULTS" --elapsed "$((SECONDS - STARTED))" --quick "$QUICK"
log "deleting the data measured"
# bench/seaweedfs.sh and bench/s3.sh move theirs aside too, and leave it to this run.
rm -rf "$TRASH" "$DIR"/trash-seaweedfs-* "$DIR"/trash-s3-*
