#!/usr/bin/env bash
# The original AetherStore README's curl walk-through ("Testing the Full System"), run
# for real and checked at every step:
#   1. register the datanodes with the master      POST /api/node/register
#   2. ask for a placement                         POST /api/upload/init
#   3. upload the bytes to every placed datanode   PUT  /objects/ID
#   4. mark the upload complete                    POST /api/upload/complete
#   5. read the object's replicas                  GET  /api/objects/ID
# and then reads the object back from every replica. Prints the object id last.
#
#   deploy/walkthrough.sh MASTER_URL [NODE_ID=NODE_URL ...]
#   deploy/walkthrough.sh http://localhost:42100 datanode-1=http://localhost:42101 datanode-2=http://localhost:42102
#
# With AETHER_WALKTHROUGH_VERBATIM=1, step 3 uploads to the nodes given on the command line,
# as the original does (it PUTs to 42101 and 42102 whatever step 2 placed), and step 5
# expects exactly those as the replicas: a copy a datanode confirms counts wherever it
# landed, and the placed nodes that got none are dropped.
#
# Registering a node again under the id and address it registered itself with is a
# no-op, as in the original; a different id for an address already held is refused.
# Registration is an internal endpoint: in a cluster with a token, set
# AETHER_CLUSTER_TOKEN and step 1 sends it in the X-Aether-Token header (the other
# steps are the public API and need none).
# Needs bash, curl and python3 (for reading JSON).
set -euo pipefail

master=${1:?usage: walkthrough.sh MASTER_URL [NODE_ID=NODE_URL ...]}
shift

step() { printf '\n== %s\n' "$*" >&2; }
show() { printf '$ %s\n' "$*" >&2; }
fail() { printf 'walkthrough FAILED: %s\n' "$*" >&2; exit 1; }
json() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# request METHOD URL [curl args...]: prints the body; the status goes to $work/status.
request() {
    local method=$1 url=$2
    shift 2
    show curl -X "$method" "$url" "$@"
    curl -sS -X "$method" -o "$work/body" -w '%{http_code}' "$url" "$@" >"$work/status" ||
        fail "curl $method $url did not get an answer"
    cat "$work/body" >&2
    printf '   -> HTTP %s\n' "$(cat "$work/status")" >&2
}
expect_status() {
    [[ $(cat "$work/status") == "$1" ]] || fail "expected HTTP $1, got $(cat "$work/status"): $(cat "$work/body")"
}

step "1. Register DataNodes with Master"
token_header=()
[[ -n ${AETHER_CLUSTER_TOKEN:-} ]] && token_header=(-H "X-Aether-Token: $AETHER_CLUSTER_TOKEN")
for node in "$@"; do
    id=${node%%=*}
    address=${node#*=}
    request POST "$master/api/node/register" -H "Content-Type: application/json" "${token_header[@]}" \
        -d "{\"id\":\"$id\",\"address\":\"$address\"}"
    expect_status 200
    [[ $(json 'd["status"]' <"$work/body") == OK ]] || fail "register did not answer {\"status\": \"OK\"}"
done

step "2. Request placement"
request POST "$master/api/upload/init" -H "Content-Type: application/json" -d '{"size":1024}'
expect_status 200
object_id=$(json 'd["objectid"]' <"$work/body")
mapfile -t nodes < <(json '"\n".join(d["nodes"])' <"$work/body")
((${#nodes[@]} >= 1)) || fail "the placement names no datanode"

if [[ ${AETHER_WALKTHROUGH_VERBATIM:-} == 1 ]]; then
    nodes=()
    for node in "$@"; do nodes+=("${node#*=}"); done
    ((${#nodes[@]} >= 1)) || fail "AETHER_WALKTHROUGH_VERBATIM=1 needs the datanodes on the command line"
fi

step "3. Upload to assigned nodes"
echo "test data" >"$work/test.txt"
for node in "${nodes[@]}"; do
    request PUT "$node/objects/$object_id" --data-binary "@$work/test.txt"
    expect_status 201
done

step "4. Mark upload complete"
request POST "$master/api/upload/complete" -H "Content-Type: application/json" \
    -d "{\"objectid\":\"$object_id\"}"
expect_status 200

step "5. Retrieve object metadata"
request GET "$master/api/objects/$object_id"
expect_status 200
replicas=$(json '" ".join(sorted(d["replicas"]))' <"$work/body")
[[ $replicas == "$(printf '%s\n' "${nodes[@]}" | sort | paste -sd' ')" ]] ||
    fail "replicas ($replicas) are not the nodes uploaded to (${nodes[*]})"

step "Read the object back from every replica"
for node in "${nodes[@]}"; do
    show curl "$node/objects/$object_id"
    curl -sSf "$node/objects/$object_id" -o "$work/read.txt" || fail "GET $node/objects/$object_id failed"
    cmp -s "$work/test.txt" "$work/read.txt" || fail "$node returned other bytes than were uploaded"
done

printf '\nwalk-through passed: object %s on %s\n' "$object_id" "${nodes[*]}" >&2
echo "$object_id"
