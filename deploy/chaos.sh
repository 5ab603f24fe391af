#!/usr/bin/env bash
# The chaos test (docs/chaos.md): a master and five datanodes at R=3 in the project's
# image on a private Docker network, a client workload of concurrent uploads, reads and
# deletes, a nemesis that kills, pauses, partitions and takes disks away, and a checker
# that then reads everything back. Prints availability during each fault and the time to
# full repair; ends with "chaos: N passed, M failed".
#
#   deploy/chaos.sh                        # each fault once (about 4 minutes)
#   deploy/chaos.sh --duration 1800        # half an hour of faults
#   deploy/chaos.sh --seed 42 --keep       # a given schedule; leave the containers up
#   deploy/chaos.sh --help                 # every option (deploy/chaos/nemesis.py)
#
# Environment: AETHER_BINARY=PATH uses that binary instead of building one with
# deploy/build-static.sh. Needs a Docker engine; says so loudly and exits 0 when none
# answers (AETHER_REQUIRE_DOCKER=1 fails instead). Builds the image from the cached
# debootstrap base (deploy/build-base-image.sh), as the deploy test does. Talks only to
# its own containers, all named aether-chaos-*, and removes them on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
AETHER_LOG_TAG=chaos

IMAGE=aetherstore:chaos
keep=false
for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
        exec python3 "$AETHER_REPO_ROOT/deploy/chaos/nemesis.py" --help
    fi
    [[ $arg == --keep ]] && keep=true
done

if ! docker info >/dev/null 2>&1; then
    printf '\n!!!!!!!!!!\n!!! CHAOS TEST SKIPPED: no Docker engine answers (docker info failed)\n!!!!!!!!!!\n\n' >&2
    [[ -n ${AETHER_REQUIRE_DOCKER:-} ]] && { printf '\nchaos: 0 passed, 1 failed\n'; exit 1; }
    exit 0
fi

results=$AETHER_REPO_ROOT/target/chaos
finish() {
    local rc=$?
    set +e
    # nemesis.py removes its containers itself; this catches an interrupted build or run.
    if ! $keep; then
        docker ps -aq --filter label=org.aetherstore.chaos=1 | xargs -r docker rm -f -v >/dev/null 2>&1
        docker network rm aether-chaos-net >/dev/null 2>&1
        docker image rm "$IMAGE" >/dev/null 2>&1
    fi
    print_timings
    exit "$rc"
}
trap finish EXIT

apt_install python3
start=$SECONDS
if [[ -n ${AETHER_BINARY:-} ]]; then
    mkdir -p "$AETHER_REPO_ROOT/target/deploy"
    [[ $AETHER_BINARY -ef $AETHER_REPO_ROOT/target/deploy/aether ]] ||
        cp -f "$AETHER_BINARY" "$AETHER_REPO_ROOT/target/deploy/aether"
else
    timed "static binary" "$AETHER_REPO_ROOT/deploy/build-static.sh" >/dev/null
fi
base_image=$("$AETHER_REPO_ROOT/deploy/build-base-image.sh")
timed "docker build" docker build -q --build-arg "BASE_IMAGE=$base_image" -t "$IMAGE" "$AETHER_REPO_ROOT" >/dev/null
rm -rf "$results"
mkdir -p "$results"
rc=0
timed "chaos run" python3 "$AETHER_REPO_ROOT/deploy/chaos/nemesis.py" --image "$IMAGE" --results "$results" "$@" || rc=$?
say "operation logs and the checker's results: $results (took $((SECONDS - start)) s)"
exit "$rc"
