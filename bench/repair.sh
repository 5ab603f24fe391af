#!/usr/bin/env bash
# Repair time: uploads 10,000 small objects at R=3 to a local cluster of a master and 4
# datanodes, SIGKILLs one datanode, and measures the time from the kill until the master
# reports the node dead (detection) and until `GET /api/cluster` reports
# `under_replicated: 0` with `nodes_dead: 1` (repair). Prints one JSON line; the master
# runs with --dead-after 3 and the datanodes with --heartbeat-interval 0.5.
#
# Usage: bench/repair.sh [OBJECTS] [SIZE]    (defaults 10000 and 4K)
#        append its line to bench/results/repair.jsonl to keep it with the others.
# Environment: BENCH_DIR (default target/bench/repair), AETHER (default target/release/aether),
#              REPAIR_MASTER_ARGS (more master flags, e.g. "--repair-concurrency 16").
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

OBJECTS=${1:-10000}
SIZE=${2:-4K}
DIR=${BENCH_DIR:-target/bench/repair}
LOGS=$DIR/logs
# The last run's files are deleted once this run is done, not before: on ext4 without a
# journal, files created within minutes of a mass deletion cost many times the CPU (see
# "Reading the figures" in README.md), and repair creates thousands.
TRASH=$DIR.trash
if [[ -e $DIR ]]; then
  mkdir -p "$TRASH"
  mv "$DIR" "$TRASH/$(date +%s%N)"
fi
mkdir -p "$LOGS"
trap 'bench_cleanup; rm -rf "$TRASH"' EXIT

[[ -x $AETHER ]] || cargo build --release --quiet

# shellcheck disable=SC2086 # the extra flags are words
start_master master "$DIR/master" --replication 3 --dead-after 3 ${REPAIR_MASTER_ARGS:-}
declare -A PIDS
for i in 1 2 3 4; do
  start_datanode "datanode-$i" "$DIR/datanode-$i" --heartbeat-interval 0.5
  PIDS[$i]=$DATANODE_PID
done
wait_for_nodes 4 60

log "uploading $OBJECTS objects of $SIZE at R=3"
"$AETHER" bench put --master "$MASTER_URL" --count "$OBJECTS" --size "$SIZE" --replication 3 --threads 16 --json \
  >"$DIR/upload.json"

# The cluster must be healthy before the kill, or the figure means nothing.
python3 bench/watch_cluster.py "$MASTER_URL" --until healthy --nodes 4 --timeout 60 >/dev/null

log "killing datanode-1 (pid ${PIDS[1]}) with SIGKILL"
KILLED_AT=$(date +%s.%N)
kill -KILL "${PIDS[1]}"
python3 bench/watch_cluster.py "$MASTER_URL" --until repaired --since "$KILLED_AT" --timeout 600 \
  --upload "$DIR/upload.json" --objects "$OBJECTS" --size "$SIZE" \
  --master-args "--replication 3 --dead-after 3 ${REPAIR_MASTER_ARGS:-}" \
  --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo +changes)"
