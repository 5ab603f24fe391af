# Shell helpers of the benchmark suite, sourced by bench/run.sh and bench/repair.sh:
# start `aether master` and `aether datanode` processes on free loopback ports, wait for
# them with deadlines, measure their memory, and stop everything they started on exit.
# Everything listens on 127.0.0.1 only.

AETHER=${AETHER:-target/release/aether}
BENCH_PIDS=()

# Stops every process started here (SIGINT first for a clean stop, then SIGKILL).
bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# wait_for_log FILE NEEDLE SECONDS: waits until FILE has a line with NEEDLE.
wait_for_log() {
  local file=$1 needle=$2 deadline=$((SECONDS + $3))
  until grep -q "$needle" "$file" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "timed out waiting for '$needle' in $file:" >&2
      tail -20 "$file" >&2
      return 1
    fi
    sleep 0.05
  done
}

# listen_url LOGFILE: the http://127.0.0.1:PORT a server logged it listens on.
listen_url() {
  grep -o 'listening on http://[0-9.:]*' "$1" | head -1 | sed 's/listening on //'
}

# start_master NAME DATA_DIR [EXTRA ARGS..]: starts a master on a free port; sets
# MASTER_URL and MASTER_PID.
start_master() {
  local name=$1 data=$2
  shift 2
  mkdir -p "$data"
  "$AETHER" master --listen 127.0.0.1:0 --data "$data" "$@" 2>"$LOGS/$name.log" &
  MASTER_PID=$!
  BENCH_PIDS+=("$MASTER_PID")
  wait_for_log "$LOGS/$name.log" 'listening on http://' 60
  MASTER_URL=$(listen_url "$LOGS/$name.log")
}

# start_datanode NAME DATA_DIR [EXTRA ARGS..]: starts a datanode that registers with
# MASTER_URL; sets DATANODE_PID.
start_datanode() {
  local name=$1 data=$2
  shift 2
  mkdir -p "$data"
  "$AETHER" datanode --listen 127.0.0.1:0 --data "$data" --node-id "$name" --master "$MASTER_URL" "$@" \
    2>"$LOGS/$name.log" &
  DATANODE_PID=$!
  BENCH_PIDS+=("$DATANODE_PID")
  wait_for_log "$LOGS/$name.log" 'listening on http://' 60
}

# wait_for_nodes N SECONDS: waits until the master lists N datanodes, all alive.
wait_for_nodes() {
  local want=$1 deadline=$((SECONDS + $2)) alive
  while :; do
    alive=$(curl -fsS --max-time 2 "$MASTER_URL/api/nodes" 2>/dev/null | grep -o '"state":"alive"' | wc -l)
    ((alive >= want)) && return 0
    if ((SECONDS >= deadline)); then
      echo "only $alive of $want datanodes alive after $2 s" >&2
      return 1
    fi
    sleep 0.05
  done
}

# rss_kib PID: resident memory of a process now, in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# hwm_kib PID: peak resident memory of a process so far, in KiB.
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# write_env FILE DIR: what this run measures on (machine, commit, load) as JSON in FILE;
# DIR is the work directory on the data disk.
write_env() {
  python3 - "$1" "$2" <<'PY'
import json, os, platform, subprocess, sys, time
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout != ""
json.dump({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host_cpus": os.cpu_count(),
           "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
           "kernel": platform.release(), "commit": commit + ("+changes" if dirty else ""),
           "loadavg_start": open("/proc/loadavg").read().split()[:3], "dir": os.path.abspath(sys.argv[2])},
          open(sys.argv[1], "w"))
PY
}

# free_ports N: N ports free on 127.0.0.1 now.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
