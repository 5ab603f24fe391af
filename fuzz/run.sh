#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation and runs each for a
# bounded time, starting from the committed seeds (fuzz/seeds/TARGET) and the corpus
# earlier runs grew (fuzz/corpus/TARGET, not committed). See docs/fuzzing.md.
#
#   fuzz/run.sh                      # every target, 25 s each, two at a time
#   fuzz/run.sh -t 600 http_request  # one target for ten minutes
#   fuzz/run.sh -j 1 -t 20           # one at a time
#
# Works on a stable toolchain: it passes rustc the flags `cargo fuzz build -s none`
# would (coverage counters and comparison tracing, no sanitizer), so cargo-fuzz is not
# needed; `cargo fuzz run TARGET` works too where it is installed. A crash, a hang or a
# failed assertion leaves its input in fuzz/artifacts/TARGET/ and is printed; turn it
# into a unit test beside the parser. Ends with "fuzz: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")" || exit 1

seconds=25
jobs=2
while getopts t:j: opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        j) jobs=$OPTARG ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
all=(http_request range object_id chain json_bodies footer record_header)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

say() { printf '%s [fuzz] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

bin_args=()
for target in "${targets[@]}"; do bin_args+=(--bin "$target"); done
triple=$(rustc -vV | sed -n 's/^host: //p')
start=$SECONDS
say "building ${targets[*]} (release, libFuzzer coverage, debug assertions)"
if ! RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo build --locked --release --target "$triple" "${bin_args[@]}" >&2; then
    say "the fuzz targets do not build"
    printf '\nfuzz: 0 passed, 1 failed\n'
    exit 1
fi
say "built in $((SECONDS - start)) s"
bin=target/$triple/release

# run_one TARGET: fuzzes it for $seconds; its log goes to target/fuzz-logs/TARGET.log.
run_one() {
    local target=$1 log=target/fuzz-logs/$1.log
    mkdir -p "corpus/$target" "artifacts/$target" target/fuzz-logs
    # -close_fd_mask=2 mutes the server's request log; libFuzzer's own report still shows.
    "$bin/$target" "corpus/$target" "seeds/$target" \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 -close_fd_mask=2 >"$log" 2>&1
}

pids=()
names=()
for target in "${targets[@]}"; do
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
    say "running $target for ${seconds} s"
    run_one "$target" &
    pids+=($!)
    names+=("$target")
done

passed=0
failed=0
for i in "${!pids[@]}"; do
    target=${names[$i]}
    log=target/fuzz-logs/$target.log
    if wait "${pids[$i]}"; then
        passed=$((passed + 1))
        say "ok: $target: $(awk '/stat::number_of_executed_units/ { e = $2 } /stat::new_units_added/ { n = $2 } END { printf "%d runs, %d new inputs", e, n }' "$log"), corpus $(find "corpus/$target" -type f | wc -l) files"
    else
        failed=$((failed + 1))
        say "NOT OK: $target found a failing input:"
        grep -E '^==[0-9]+== ERROR|^SUMMARY|Test unit written to|out-of-memory|deadly signal|timeout' "$log" | head -n 8 >&2
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        if [[ -n $artifact && -f $artifact ]]; then
            say "the input ($artifact), first 300 bytes:"
            head -c 300 "$artifact" | od -c | head -n 20 >&2
            say "what the target says about it:"
            timeout 60 "$bin/$target" "$artifact" 2>&1 | grep -vE '^INFO:|^[0-9T:.-]+Z INFO' | head -n 20 >&2
        else
            tail -n 30 "$log" >&2
        fi
    fi
done
say "fuzzing took $((SECONDS - start)) s in all"
printf '\nfuzz: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
