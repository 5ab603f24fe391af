#!/usr/bin/env bash
# The deploy test: proves on real hosts that the three ways of deploying AetherStore work
# as shipped (docs/deploy.md).
#
#   lint     ansible-lint (production profile), ansible-playbook --syntax-check,
#            vagrant validate --ignore-provider, docker compose config, shellcheck
#   ansible  four Debian 12 containers with systemd as PID 1 on a private Docker network
#            play the hosts; ansible/site.yml is run against them (Ansible's docker
#            connection; the master gets the static binary, the datanodes the Debian
#            package of deploy/build-deb.sh; S3 gateways beside the master and beside
#            datanode-2), run again (nothing may change), run with another replication
#            factor (only the master may restart) and with a new binary (every service
#            restarts, the datanodes one at a time). Then: the hardening is in force, the
#            rendered units pass systemd-analyze verify, the seed's curl walk-through and
#            an `aether put`/`get` round trip work through the deployed cluster, boto3
#            (from this machine, at the containers' addresses) puts objects through one
#            gateway and reads them back through the other, every server's /metrics,
#            scraped from inside the container network, parses and has its key series
#            with plausible values, and every object (S3 ones too) can still be read with
#            one datanode container stopped. On a fifth container the package is
#            installed by hand: its own units run a master and a gateway, an upgrade
#            restarts the master and keeps local settings, remove and purge keep the data.
#   docker   builds the image, brings docker-compose.yml up (with its S3 gateway), runs
#            the walk-through, a put/get round trip and a boto3 round trip through the
#            gateway from this machine, checks the master's and the gateway's /metrics,
#            stops a datanode, reads everything back, and brings it down.
#
#   deploy/test.sh                    # all stages
#   deploy/test.sh ansible docker     # some of them
#
# Environment: AETHER_BINARY=PATH uses that binary instead of building one with
# deploy/build-static.sh; AETHER_DEPLOY_PREFIX names the containers and network (default
# aether-dt), so that two checkouts can run the ansible stage at once; AETHER_KEEP=1 leaves the containers running for a look
# afterwards (remove them with AETHER_KEEP= deploy/test.sh --cleanup-only).
#
# Needs a Docker engine; says so loudly and exits 0 when none answers (set
# AETHER_REQUIRE_DOCKER=1 to fail instead). Installs what else it needs (debootstrap,
# vagrant, shellcheck, Ansible in a virtualenv; boto3 and the Prometheus Python client in
# another when this machine's python3 lacks them) and caches the virtualenvs and the
# base image between runs. Talks only to loopback and to the containers it starts, and
# tears them down on exit. Ends with "deploy: N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
AETHER_LOG_TAG=deploy-test

ANSIBLE_VERSION=12.3.0
ANSIBLE_LINT_VERSION=26.10.1
# The S3 client and the scrape parser, at the versions .ci/run installs.
BOTO3_VERSION=1.43.11
PROMETHEUS_CLIENT_VERSION=0.21.1
PREFIX=${AETHER_DEPLOY_PREFIX:-aether-dt}
NETWORK=$PREFIX-net
MASTER=$PREFIX-master
DATANODES=("$PREFIX-datanode-1" "$PREFIX-datanode-2" "$PREFIX-datanode-3")
HOSTS=("$MASTER" "${DATANODES[@]}")
# The S3 gateways share hosts: one beside the master (binary install: its restart after
# an upgrade comes from the role's check of the binary it runs), one beside a datanode
# (package install).
GATEWAYS=("$MASTER" "${DATANODES[1]}")
S3_PORT=9000
# A fifth host, where the package is installed by hand rather than by Ansible.
PACKAGE_HOST=$PREFIX-package
COMPOSE_PROJECT=$PREFIX-compose
IMAGE=aetherstore:deploy-test
HOST_PORTS=(42100 42101 42102 42103 "$S3_PORT")

stages=("$@")
cleanup_only=false
if [[ ${1:-} == --cleanup-only ]]; then
    cleanup_only=true
    stages=()
fi
((${#stages[@]})) || stages=(lint ansible docker)
for stage in "${stages[@]}"; do
    [[ $stage == @(lint|ansible|docker) ]] || die "unknown stage $stage (lint, ansible, docker)"
done
wants() { [[ " ${stages[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------
# Results and teardown

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    say "ok: $*"
}
fail() {
    failed=$((failed + 1))
    say "NOT OK: $*"
    exit 1
}
# check DESCRIPTION COMMAND...: one counted check.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

work=$(mktemp -d /tmp/aether-deploy-test.XXXXXX)
compose=()

teardown() {
    local c
    [[ -n ${AETHER_KEEP:-} ]] && { say "AETHER_KEEP is set: leaving ${HOSTS[*]} and $COMPOSE_PROJECT running"; return; }
    if ((${#compose[@]})); then
        AETHER_IMAGE=$IMAGE "${compose[@]}" -p "$COMPOSE_PROJECT" -f "$AETHER_REPO_ROOT/docker-compose.yml" \
            down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    for c in "${HOSTS[@]}" "$PACKAGE_HOST"; do
        docker rm -f -v "$c" >/dev/null 2>&1 || true
    done
    docker network rm "$NETWORK" >/dev/null 2>&1 || true
    docker image rm "$IMAGE" >/dev/null 2>&1 || true
}

finish() {
    local rc=$?
    set +e
    teardown
    if [[ -n ${AETHER_KEEP:-} ]]; then say "AETHER_KEEP is set: logs and inventory kept in $work"; else rm -rf "$work"; fi
    if ((${#AETHER_TIMINGS[@]})); then print_timings; fi
    ((rc != 0 && failed == 0)) && failed=1
    printf '\ndeploy: %d passed, %d failed\n' "$passed" "$failed"
    exit "$rc"
}

if $cleanup_only; then
    compose=(docker-compose)
    docker compose version >/dev/null 2>&1 && compose=(docker compose)
    teardown
    rm -rf "$work"
    exit 0
fi
trap finish EXIT

if ! docker info >/dev/null 2>&1; then
    trap - EXIT
    rm -rf "$work"
    msg="DEPLOY TEST SKIPPED: no Docker engine answers ('docker info' failed); the playbook, the image and the compose file were NOT exercised"
    printf '\n!!!!!!!!!!\n!!! %s\n!!!!!!!!!!\n\n' "$msg" >&2
    [[ -n ${AETHER_REQUIRE_DOCKER:-} ]] && exit 1
    exit 0
fi

# Leftovers of an earlier run that was killed before its teardown.
docker compose version >/dev/null 2>&1 && compose=(docker compose)
((${#compose[@]})) || compose=(docker-compose)
teardown
compose=()

# ---------------------------------------------------------------------------------------
# What every stage needs

make_base_image() {
    base_image=$("$AETHER_REPO_ROOT/deploy/build-base-image.sh")
}

setup_tools() {
    apt_install curl python3 binutils
}

# The Python that runs deploy/s3_check.py (boto3) and deploy/metrics_check.py (the
# Prometheus client's parser): this machine's python3 when it has both (CI installs
# them), else a virtualenv kept between runs. Run before setup_ansible puts the Ansible
# virtualenv first on the PATH.
setup_clients() {
    client_python=$(command -v python3)
    "$client_python" -c 'import boto3, prometheus_client.parser' 2>/dev/null && return 0
    local venv=$AETHER_CACHE_DIR/venv-clients-boto3-$BOTO3_VERSION-prometheus-$PROMETHEUS_CLIENT_VERSION
    if [[ ! -f $venv/.complete ]]; then
        rm -rf "$venv"
        mkdir -p "$AETHER_CACHE_DIR"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            apt_install python3-venv
            rm -rf "$venv"
            python3 -m venv "$venv"
        fi
        say "pip install boto3==$BOTO3_VERSION prometheus-client==$PROMETHEUS_CLIENT_VERSION"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "boto3==$BOTO3_VERSION" "prometheus-client==$PROMETHEUS_CLIENT_VERSION" >&2
        touch "$venv/.complete"
    fi
    client_python=$venv/bin/python3
}

get_binary() {
    if [[ -n ${AETHER_BINARY:-} ]]; then
        mkdir -p "$AETHER_REPO_ROOT/target/deploy"
        [[ $AETHER_BINARY -ef $AETHER_REPO_ROOT/target/deploy/aether ]] ||
            cp -f "$AETHER_BINARY" "$AETHER_REPO_ROOT/target/deploy/aether"
    else
        "$AETHER_REPO_ROOT/deploy/build-static.sh" >/dev/null
    fi
    binary=$AETHER_REPO_ROOT/target/deploy/aether
    check "the aether binary is statically linked" bash -c "! readelf -dW '$binary' | grep -q NEEDED"
}

# The Debian package around that binary (deploy/build-deb.sh).
get_package() {
    deb=$("$AETHER_REPO_ROOT/deploy/build-deb.sh" --binary "$binary")
    deb_version=$(dpkg-deb -f "$deb" Version)
    check "the package holds the binary, both units, the settings as conffiles and completions" package_complete
}

package_complete() {
    local contents f
    contents=$(dpkg-deb --contents "$deb" | awk '{ print $NF }')
    for f in ./usr/bin/aether ./lib/systemd/system/aether-master.service ./lib/systemd/system/aether-datanode.service \
        ./lib/systemd/system/aether-s3.service ./etc/aether/master.env ./etc/aether/datanode.env ./etc/aether/s3.env \
        ./usr/share/bash-completion/completions/aether; do
        grep -qxF "$f" <<<"$contents" || { say "the package lacks $f"; return 1; }
    done
    [[ $(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles) == $'/etc/aether/master.env\n/etc/aether/datanode.env\n/etc/aether/s3.env' ]] &&
        cmp -s <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/aether) "$binary"
}

# Ansible and ansible-lint from PyPI in a virtualenv kept between runs. The full `ansible`
# package bundles the collections, community.docker's connection plugin among them
# (Galaxy cannot be reached here).
setup_ansible() {
    local venv=$AETHER_CACHE_DIR/venv-ansible-$ANSIBLE_VERSION-lint-$ANSIBLE_LINT_VERSION
    if [[ ! -f $venv/.complete ]]; then
        rm -rf "$venv"
        mkdir -p "$AETHER_CACHE_DIR"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            apt_install python3-venv
            rm -rf "$venv"
            python3 -m venv "$venv"
        fi
        say "pip install ansible==$ANSIBLE_VERSION ansible-lint==$ANSIBLE_LINT_VERSION"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "ansible==$ANSIBLE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION" >&2
        touch "$venv/.complete"
    fi
    export PATH=$venv/bin:$PATH
    export ANSIBLE_CONFIG=$AETHER_REPO_ROOT/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
    export ANSIBLE_LOCAL_TEMP=$work/ansible-tmp ANSIBLE_HOME=$work/ansible-home
}

# ---------------------------------------------------------------------------------------
# Stage: lint

stage_lint() {
    (cd "$AETHER_REPO_ROOT/ansible" && ansible-lint --version | head -n 1 >&2)
    check "ansible-lint passes with the production profile" \
        bash -c "cd '$AETHER_REPO_ROOT/ansible' && ansible-lint >&2"
    check "ansible-playbook --syntax-check passes" \
        bash -c "cd '$AETHER_REPO_ROOT/ansible' && AETHER_CLUSTER_TOKEN=syntax-check-only-token ansible-playbook -i inventory/example/hosts.yml --syntax-check site.yml >&2"

    apt_install vagrant
    local validate="cd '$AETHER_REPO_ROOT' && VAGRANT_DOTFILE_PATH='$work/vagrant' VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider >&2"
    check "vagrant validate --ignore-provider passes" bash -c "$validate"
    check "vagrant validate --ignore-provider passes with AETHER_DATANODES=5" \
        bash -c "export AETHER_DATANODES=5; $validate"

    check "the compose file is valid" bash -c \
        "cd '$AETHER_REPO_ROOT' && ${compose[*]} -f docker-compose.yml config -q"

    apt_install shellcheck
    check "the deploy scripts pass shellcheck" bash -c \
        "cd '$AETHER_REPO_ROOT' && shellcheck -S warning -x -P deploy deploy/*.sh deploy/docker/*.sh deploy/deb/post* deploy/deb/prerm >&2"
    check "the deploy test's Python helpers compile" bash -c \
        "cd '$AETHER_REPO_ROOT' && python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' deploy/*.py"
}

# ---------------------------------------------------------------------------------------
# Stage: ansible

in_host() { docker exec "$1" bash -c "$2"; }

# run_host NAME: a container with systemd as PID 1 on $NETWORK.
run_host() {
    # systemd as PID 1 needs /run on tmpfs and the cgroup tree; CAP_SYS_ADMIN lets it set
    # up the units' sandboxing (ProtectSystem= and friends), which it silently skips
    # without, so that the hardening is really exercised; CAP_SYS_PTRACE lets the test
    # enter a service's mount namespace to look at it.
    local cgroup=(-v /sys/fs/cgroup:/sys/fs/cgroup:ro)
    [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]] && cgroup=(--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
    docker run -d --name "$1" --hostname "$1" --network "$NETWORK" \
        --cap-add SYS_ADMIN --cap-add SYS_PTRACE --tmpfs /run --tmpfs /run/lock "${cgroup[@]}" \
        --stop-signal SIGRTMIN+3 --stop-timeout 30 \
        "$base_image" /sbin/init >/dev/null
}

start_hosts() {
    docker network create "$NETWORK" >/dev/null
    local c
    for c in "${HOSTS[@]}"; do
        run_host "$c"
    done
    for c in "${HOSTS[@]}"; do
        if ! wait_until 60 "systemd on $c" in_host "$c" \
            '[[ $(systemctl is-system-running) == @(running|degraded) ]]'; then
            say "systemd did not come up in $c; its output:"
            docker logs "$c" 2>&1 | tail -n 40 >&2
            in_host "$c" 'systemctl --failed --no-pager; journalctl -b --no-pager | tail -n 40' >&2 || true
            fail "systemd runs as PID 1 in $c"
        fi
        if [[ $(in_host "$c" 'systemctl is-system-running' || true) == degraded ]]; then
            say "$c is degraded:"
            in_host "$c" 'systemctl --failed --no-pager' >&2 || true
        fi
    done
    pass "systemd runs as PID 1 in ${#HOSTS[@]} containers on network $NETWORK"
}

write_inventory() {
    inventory=$work/inventory
    mkdir -p "$inventory/group_vars"
    {
        echo "all:"
        echo "  children:"
        echo "    master:"
        echo "      hosts:"
        echo "        $MASTER: {}"
        echo "    datanodes:"
        echo "      hosts:"
        local c
        for c in "${DATANODES[@]}"; do echo "        $c: {}"; done
        echo "    s3_gateways:"
        echo "      hosts:"
        for c in "${GATEWAYS[@]}"; do echo "        $c: {}"; done
    } >"$inventory/hosts.yml"
    cluster_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat >"$inventory/group_vars/all.yml" <<EOF
# The hosts are containers: Ansible reaches them with docker exec, and they reach each
# other by container name on $NETWORK (ansible_host is the inventory name).
ansible_connection: community.docker.docker
ansible_python_interpreter: /usr/bin/python3
aether_common_cluster_token: $cluster_token
aether_common_binary_src: $binary
aether_master_replication: 2
aether_master_port: 42100
aether_datanode_port: 42101
aether_datanode_serial: 1
# The optional settings, so that their templates are exercised too.
aether_master_write_quorum: 2
aether_master_dead_after: 12
aether_datanode_heartbeat_interval: 3
aether_s3_port: $S3_PORT
aether_s3_threads: 32
EOF
    # Both install methods in one run: the master gets the binary, the datanodes the package.
    cat >"$inventory/group_vars/datanodes.yml" <<EOF
aether_common_install_method: deb
aether_common_deb_src: $deb
EOF
}

# run_playbook NAME [ansible-playbook args...]: runs site.yml, output in $work/NAME.log.
run_playbook() {
    local name=$1
    shift
    local log=$work/$name.log
    say "ansible-playbook site.yml $* (log: $name)"
    if ! (cd "$AETHER_REPO_ROOT/ansible" && ansible-playbook -i "$inventory/hosts.yml" site.yml "$@") >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        fail "playbook run '$name' succeeds"
    fi
    sed -n '/^PLAY RECAP/,$p' "$log" >&2
    changed_tasks "$log" >&2
}

# The tasks that reported a change, with their hosts.
changed_tasks() {
    awk '/^TASK \[|^RUNNING HANDLER \[/ { task = $0; sub(/ \*+$/, "", task) }
         /^changed: \[/ { host = $2; gsub(/[\[\]]/, "", host); print "    changed: " task " on " host }' "$1"
}

# changed_count LOG HOST: the changed= count of HOST in the recap.
changed_count() {
    awk -v host="$2" '/^PLAY RECAP/ { recap = 1 } recap && $1 == host { for (i = 2; i <= NF; i++) if ($i ~ /^changed=/) { sub(/changed=/, "", $i); print $i } }' "$1"
}

# has_env CONTAINER SERVICE NAME=VALUE: the running service has that variable.
has_env() {
    in_host "$1" "tr '\\0' '\\n' </proc/\$(systemctl show -p MainPID --value $2)/environ" | grep -qx "$3"
}

main_pid() { in_host "$1" "systemctl show -p MainPID --value $2"; }
service_of() { [[ $1 == "$MASTER" ]] && echo aether-master || echo aether-datanode; }
pids_now() {
    local c
    for c in "${HOSTS[@]}"; do printf '%s=%s ' "$c" "$(main_pid "$c" "$(service_of "$c")")"; done
}
gateway_pids_now() {
    local c
    for c in "${GATEWAYS[@]}"; do printf '%s=%s ' "$c" "$(main_pid "$c" aether-s3)"; done
}
pid_in() { local entry; for entry in $1; do [[ ${entry%%=*} == "$2" ]] && echo "${entry#*=}"; done; }

# restarted BEFORE AFTER CONTAINER...: each container's service has another main PID.
restarted() {
    local before=$1 after=$2 c
    shift 2
    for c in "$@"; do
        [[ $(pid_in "$before" "$c") != "$(pid_in "$after" "$c")" ]] || return 1
    done
}

changed_only_on() {
    local log=$1 only=$2 c
    for c in "${HOSTS[@]}"; do
        if [[ $c == "$only" ]]; then
            (($(changed_count "$log" "$c") > 0)) || return 1
        else
            (($(changed_count "$log" "$c") == 0)) || return 1
        fi
    done
}

# Where each host's aether is: the master has the binary, the datanodes the package.
binary_path_of() { if [[ $1 == "$MASTER" ]]; then echo /usr/local/bin/aether; else echo /usr/bin/aether; fi; }

same_binary_everywhere() {
    local c
    for c in "${HOSTS[@]}"; do
        [[ $(docker exec "$c" sha256sum "$(binary_path_of "$c")" | cut -d' ' -f1) == "$1" ]] || return 1
    done
}

# package_on_datanodes VERSION: every datanode has that version of the package
# installed, and the master has none.
package_on_datanodes() {
    local c
    for c in "${DATANODES[@]}"; do
        [[ $(in_host "$c" "dpkg-query -W -f '\${Status} \${Version}' aetherstore") == "install ok installed $1" ]] || return 1
    done
    ! in_host "$MASTER" 'dpkg-query -W aetherstore' >/dev/null 2>&1
}

all_changed() {
    local log=$1 c
    for c in "${HOSTS[@]}"; do (($(changed_count "$log" "$c") > 0)) || return 1; done
}
none_changed() {
    local log=$1 c
    for c in "${HOSTS[@]}"; do (($(changed_count "$log" "$c") == 0)) || return 1; done
}

# The restarts of a rolling upgrade: every datanode stopped only after the one before it
# was running again (systemd's monotonic timestamps; the containers share one kernel).
rolled_one_at_a_time() {
    local since=$1 c line rows=()
    for c in "${DATANODES[@]}"; do
        line=$(in_host "$c" 'systemctl show -p InactiveEnterTimestampMonotonic -p ActiveEnterTimestampMonotonic aether-datanode' |
            awk -F= '{ v[$1] = $2 } END { print v["InactiveEnterTimestampMonotonic"], v["ActiveEnterTimestampMonotonic"] }')
        rows+=("$line $c")
    done
    printf '%s\n' "${rows[@]}" | sort -n | awk -v since="$since" '
        { printf "    %s stopped at %.2fs, running again at %.2fs\n", $3, $1 / 1e6, $2 / 1e6 > "/dev/stderr" }
        $1 < since || $2 < $1 { bad = 1 }
        NR > 1 && $1 < previous_active { bad = 1 }
        { previous_active = $2 }
        END { exit bad }'
}

# In the service's own mount namespace and as its user: the root file system is
# read-only, the data directory writable (a service without one, the S3 gateway, may
# not even write the data root), and no new privileges can be gained.
hardened() {
    local c=$1 service=$2 data=$3 writable
    if [[ -n $data ]]; then
        writable="as_service touch $data/.probe && rm -f $data/.probe"
    else
        writable="! as_service touch /var/lib/aether/.probe 2>/dev/null"
    fi
    in_host "$c" "
        set -e
        pid=\$(systemctl show -p MainPID --value $service)
        [ \"\$pid\" -gt 0 ]
        [ \"\$(stat -c %U /proc/\$pid)\" = aether ]
        grep -Eq '^NoNewPrivs:[[:space:]]+1' /proc/\$pid/status
        as_service() { nsenter -t \$pid -m -S \$(id -u aether) -G \$(id -g aether) \"\$@\"; }
        ! as_service touch /usr/local/bin/probe 2>/dev/null
        ! as_service touch /etc/aether/probe 2>/dev/null
        ! as_service touch /var/lib/probe 2>/dev/null
        $writable
    "
}

stage_ansible() {
    timed "start 4 systemd host containers" start_hosts
    write_inventory

    timed "playbook: first run" run_playbook first
    check "the first run changed every host" all_changed "$work/first.log"
    check "the datanodes have the package ($deb_version) installed, the master has none" \
        package_on_datanodes "$deb_version"
    check "the data and settings directories belong to the aether user" in_host "${DATANODES[0]}" '
        [[ $(stat -c %U:%G:%a /var/lib/aether /var/lib/aether/datanode /etc/aether /etc/aether/datanode.env | xargs) == \
            "aether:aether:750 aether:aether:750 root:aether:750 root:aether:640" ]]'

    timed "playbook: second run" run_playbook second
    check "the second run changed nothing" none_changed "$work/second.log"

    local before after c gateways_before gateways_after
    before=$(pids_now)
    gateways_before=$(gateway_pids_now)
    timed "playbook: replication 2 -> 3" run_playbook replication -e aether_master_replication=3
    after=$(pids_now)
    gateways_after=$(gateway_pids_now)
    check "a new replication factor reached the master's settings" \
        in_host "$MASTER" 'grep -qx AETHER_REPLICATION=3 /etc/aether/master.env'
    check "a new replication factor restarted the master" restarted "$before" "$after" "$MASTER"
    check "a new replication factor changed and restarted no datanode" bash -c '
        for c in "${@:3}"; do
            [[ $(grep -o "$c=[0-9]*" <<<"$1") == $(grep -o "$c=[0-9]*" <<<"$2") ]] || exit 1
        done' - "$before" "$after" "${DATANODES[@]}"
    check "a new replication factor reported changes on the master only" \
        changed_only_on "$work/replication.log" "$MASTER"
    check "a new replication factor restarted no S3 gateway (not even the one beside the master)" \
        test "$gateways_before" == "$gateways_after"

    # The upgrade: a binary with other bytes (the same program with a marker appended),
    # and the replication factor back to 2.
    cp "$binary" "$work/aether-v2"
    printf '\naether-deploy-test-upgrade\n' >>"$work/aether-v2"
    "$work/aether-v2" --help >/dev/null
    # The package of the upgrade: that binary, under a later version.
    deb_v2=$("$AETHER_REPO_ROOT/deploy/build-deb.sh" --binary "$work/aether-v2" --version "$deb_version+upgrade1" --out "$work/v2")
    before=$(pids_now)
    gateways_before=$(gateway_pids_now)
    local since
    since=$(python3 -c 'import time; print(int(time.monotonic() * 1e6))')
    timed "playbook: rolling upgrade" run_playbook upgrade -e "aether_common_binary_src=$work/aether-v2" \
        -e "aether_common_deb_src=$deb_v2"
    after=$(pids_now)
    gateways_after=$(gateway_pids_now)
    check "the upgrade installed the new binary everywhere" \
        same_binary_everywhere "$(sha256sum <"$work/aether-v2" | cut -d' ' -f1)"
    check "the upgrade installed package $deb_version+upgrade1 on the datanodes" \
        package_on_datanodes "$deb_version+upgrade1"
    check "the upgrade restarted every service" restarted "$before" "$after" "${HOSTS[@]}"
    check "the upgrade restarted both S3 gateways (the one beside the master: the role saw its binary replaced)" \
        restarted "$gateways_before" "$gateways_after" "${GATEWAYS[@]}"
    check "the upgrade restarted the datanodes one at a time" rolled_one_at_a_time "$since"

    check "the master's unit is hardened (read-only system, data dir writable, no new privileges)" \
        hardened "$MASTER" aether-master /var/lib/aether/master
    for c in "${DATANODES[@]}"; do
        check "$c's unit is hardened" hardened "$c" aether-datanode /var/lib/aether/datanode
    done
    for c in "${GATEWAYS[@]}"; do
        check "the S3 gateway's unit on $c is hardened (it writes nothing)" hardened "$c" aether-s3 ""
    done
    check "the rendered units pass systemd-analyze verify" bash -c '
        docker exec '"$MASTER"' systemd-analyze verify /etc/systemd/system/aether-master.service >&2 &&
        docker exec '"${DATANODES[0]}"' systemd-analyze verify /etc/systemd/system/aether-datanode.service >&2 &&
        docker exec '"$MASTER"' systemd-analyze verify /etc/systemd/system/aether-s3.service >&2'
    check "the package's own units pass systemd-analyze verify" in_host "${DATANODES[0]}" \
        'systemd-analyze verify /lib/systemd/system/aether-master.service /lib/systemd/system/aether-datanode.service /lib/systemd/system/aether-s3.service >&2'
    check "the package's bash completion completes aether's commands" in_host "${DATANODES[0]}" '
        source /usr/share/bash-completion/completions/aether && COMP_WORDS=(aether he) COMP_CWORD=1 && _aether &&
        [[ ${COMPREPLY[*]} == health ]]'
    local port
    for c in "${HOSTS[@]}"; do
        port=42101
        [[ $c == "$MASTER" ]] && port=42100
        check "aether health on $c says ok (exit 0)" in_host "$c" "aether health http://127.0.0.1:$port >&2"
    done
    for c in "${GATEWAYS[@]}"; do
        check "aether health on the S3 gateway on $c says ok" in_host "$c" "aether health http://127.0.0.1:$S3_PORT >&2"
    done
    in_host "$MASTER" 'systemd-analyze security --no-pager aether-master | tail -n 1' >&2 || true

    timed "walk-through and put/get on the Ansible cluster" ansible_cluster_checks
    timed "the package installed by hand" package_by_hand
}

# The package alone, as an operator installs it on a fresh host without Ansible, so that
# its own units and settings run (Ansible's override them on the other hosts).
package_by_hand() {
    local c=$PACKAGE_HOST
    run_host "$c"
    wait_until 60 "systemd on $c" in_host "$c" '[[ $(systemctl is-system-running) == @(running|degraded) ]]' ||
        fail "systemd runs as PID 1 in $c"
    docker cp "$deb" "$c:/tmp/aetherstore.deb"
    docker cp "$deb_v2" "$c:/tmp/aetherstore-v2.deb"
    check "dpkg -i installs the package and starts nothing" in_host "$c" '
        dpkg -i /tmp/aetherstore.deb >&2 && id aether >&2 &&
        ! systemctl is-enabled aether-master aether-datanode aether-s3 &&
        ! systemctl is-active aether-master aether-datanode aether-s3'
    check "the package's own unit and settings run a master (aether health ok, as aether, no new privileges)" \
        in_host "$c" '
        systemctl enable --now aether-master >&2 &&
        for i in $(seq 60); do aether health --timeout 1 >/dev/null 2>&1 && break; sleep 0.5; done &&
        aether health >&2 && pid=$(systemctl show -p MainPID --value aether-master) &&
        [ "$(stat -c %U /proc/$pid)" = aether ] && grep -Eq "^NoNewPrivs:[[:space:]]+1" /proc/$pid/status'
    # The gateway refuses to start without the cluster token (the master serves access
    # keys only with one), so the operator sets the same one for both, as s3.env says.
    check "the package's S3 gateway refuses to start without a cluster token, and says so" in_host "$c" '
        systemctl start aether-s3 >&2 || true
        for i in $(seq 60); do systemctl is-active --quiet aether-s3 || break; sleep 0.5; done &&
        ! systemctl is-active --quiet aether-s3 && journalctl -u aether-s3 --no-pager | grep -qi token'
    check "the package's own S3 gateway unit and settings run a gateway beside it (aether health ok on $S3_PORT)" \
        in_host "$c" '
        token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n") &&
        echo "AETHER_CLUSTER_TOKEN=$token" >>/etc/aether/master.env &&
        echo "AETHER_CLUSTER_TOKEN=$token" >>/etc/aether/s3.env &&
        systemctl restart aether-master &&
        for i in $(seq 60); do aether health --timeout 1 >/dev/null 2>&1 && break; sleep 0.5; done &&
        systemctl reset-failed aether-s3 >/dev/null 2>&1; systemctl enable --now aether-s3 >&2 &&
        for i in $(seq 60); do aether health --timeout 1 http://127.0.0.1:'"$S3_PORT"' >/dev/null 2>&1 && break; sleep 0.5; done &&
        aether health http://127.0.0.1:'"$S3_PORT"' >&2 && pid=$(systemctl show -p MainPID --value aether-s3) &&
        [ "$(stat -c %U /proc/$pid)" = aether ] && grep -Eq "^NoNewPrivs:[[:space:]]+1" /proc/$pid/status'
    check "an upgrade of the package keeps local settings and restarts the running master" in_host "$c" '
        echo AETHER_LOG=debug >>/etc/aether/master.env && before=$(systemctl show -p MainPID --value aether-master) &&
        dpkg -i /tmp/aetherstore-v2.deb >&2 && [ "$(tail -n 1 /etc/aether/master.env)" = AETHER_LOG=debug ] &&
        [ "$(systemctl show -p MainPID --value aether-master)" != "$before" ] &&
        for i in $(seq 60); do aether health --timeout 1 >/dev/null 2>&1 && break; sleep 0.5; done && aether health >&2'
    check "removing the package stops the master and the gateway; purging it keeps the data and the user" in_host "$c" '
        dpkg -r aetherstore >&2 && ! systemctl is-active aether-master aether-s3 && [ -f /etc/aether/master.env ] &&
        dpkg -P aetherstore >&2 && [ ! -e /etc/aether ] && [ -f /var/lib/aether/master/meta.db ] && id aether >/dev/null'
    docker rm -f -v "$c" >/dev/null 2>&1 || true
}

# Reads every object back with `aether get` and compares it with what was uploaded.
# read_back_all CONTAINER_OR_EMPTY: inside that container, or on this machine.
read_back_all() {
    local where=$1 id
    for id in "${!object_sums[@]}"; do
        local sum
        if [[ -n $where ]]; then
            sum=$(docker exec -e AETHER_MASTER="$master_url" "$where" bash -c \
                "aether get $id -o /tmp/read-back && sha256sum </tmp/read-back" | cut -d' ' -f1) || return 1
        else
            AETHER_MASTER=$master_url "$binary" get "$id" -o "$work/read-back" || return 1
            sum=$(sha256sum <"$work/read-back" | cut -d' ' -f1)
        fi
        [[ $sum == "${object_sums[$id]}" ]] || { say "object $id read back wrong"; return 1; }
    done
}

# The walk-through declares 1024 bytes and uploads "test data\n" (as the original does),
# which `aether get` rightly refuses as a size mismatch; so its object is read the
# walk-through's way: GET from a replica the master lists, the first that answers.
# read_walkthrough_object ID CONTAINER_OR_EMPTY
read_walkthrough_object() {
    local id=$1 where=$2 run=()
    [[ -n $where ]] && run=(docker exec "$where")
    local replicas replica
    replicas=$("${run[@]}" curl -sf "$master_url/api/objects/$id" |
        python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["replicas"]))') || return 1
    for replica in $replicas; do
        if [[ $("${run[@]}" curl -sf --max-time 5 "$replica/objects/$id") == "test data" ]]; then
            say "read the walk-through's object from $replica"
            return 0
        fi
    done
    return 1
}

# put_objects CONTAINER_OR_EMPTY: uploads a few objects of assorted sizes with `aether put`.
# Every placed datanode must take its copy (through the chain of datanodes forwarding
# to each other): a client falling back to another node means the advertised
# addresses do not work from everywhere.
put_objects() {
    local where=$1 n id size
    for n in 1 2 3 4 5; do
        size=$((n * n * 200000 + n))
        if [[ -n $where ]]; then
            id=$(docker exec -e AETHER_MASTER="$master_url" "$where" bash -c \
                "head -c $size /dev/urandom >/tmp/object-$n && aether put /tmp/object-$n" 2>"$work/put.err") || { cat "$work/put.err" >&2; return 1; }
            object_sums[$id]=$(docker exec "$where" sha256sum "/tmp/object-$n" | cut -d' ' -f1)
        else
            head -c "$size" /dev/urandom >"$work/object-$n"
            id=$(AETHER_MASTER=$master_url "$binary" put "$work/object-$n" 2>"$work/put.err") || { cat "$work/put.err" >&2; return 1; }
            object_sums[$id]=$(sha256sum <"$work/object-$n" | cut -d' ' -f1)
        fi
        if grep -q 'did not take a copy' "$work/put.err"; then
            cat "$work/put.err" >&2
            say "object $id: a placed datanode did not take its copy"
            return 1
        fi
    done
}

# holds_replica ID NODE_ID: the master lists NODE_ID among the object's replicas.
objects_on() {
    local node=$1 where=$2 id count=0 info
    for id in "${!object_sums[@]}"; do
        if [[ -n $where ]]; then
            info=$(docker exec "$where" curl -sf "$master_url/api/objects/$id")
        else
            info=$(curl -sf "$master_url/api/objects/$id")
        fi
        python3 -c 'import json, sys; sys.exit(0 if sys.argv[1] in [r["node"] for r in json.load(sys.stdin)["replica_nodes"]] else 1)' \
            "$node" <<<"$info" && count=$((count + 1))
    done
    echo "$count"
}

# ---------------------------------------------------------------------------------------
# S3 through the gateways, and the servers' /metrics

# container_ip CONTAINER: its address on $NETWORK (this machine reaches the containers
# there directly, with no port published).
container_ip() {
    docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$1"
}

# s3_key CONTAINER_OR_EMPTY [TOKEN]: `aether key create` against $master_url, inside
# that container or on this machine; sets s3_key_id and s3_secret.
s3_key() {
    local where=$1 token=${2:-} out
    if [[ -n $where ]]; then
        out=$(docker exec -e AETHER_MASTER="$master_url" -e AETHER_CLUSTER_TOKEN="$token" "$where" \
            aether key create deploy-test) || return 1
    else
        out=$(AETHER_MASTER=$master_url AETHER_CLUSTER_TOKEN=$token "$binary" key create deploy-test) || return 1
    fi
    s3_key_id=$(sed -n 's/^access key id: *//p' <<<"$out")
    s3_secret=$(sed -n 's/^secret access key: *//p' <<<"$out")
    [[ -n $s3_key_id && -n $s3_secret ]]
}

# s3_roundtrip put|get ENDPOINT: deploy/s3_check.py (boto3) with that key, bucket
# deploy-test; no AWS settings of this machine's user, and no proxy, reach it.
s3_roundtrip() {
    env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN -u HTTP_PROXY -u HTTPS_PROXY \
        -u http_proxy -u https_proxy -u ALL_PROXY -u all_proxy \
        AWS_ACCESS_KEY_ID="$s3_key_id" AWS_SECRET_ACCESS_KEY="$s3_secret" \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        "$client_python" "$AETHER_REPO_ROOT/deploy/s3_check.py" "$1" "$2" deploy-test >&2
}

# scrape CONTAINER_OR_EMPTY URL: GET URL/metrics, inside that container or on this machine.
scrape() {
    if [[ -n $1 ]]; then
        docker exec "$1" curl -sf --max-time 5 "$2/metrics"
    else
        curl -sf --max-time 5 "$2/metrics"
    fi
}

# metrics_hold CONTAINER_OR_EMPTY URL CHECK...: the scrape parses and every check holds
# (deploy/metrics_check.py: the Prometheus client's parser).
metrics_hold() {
    local where=$1 url=$2
    shift 2
    scrape "$where" "$url" >"$work/scrape" || { say "no scrape from $url/metrics"; return 1; }
    "$client_python" "$AETHER_REPO_ROOT/deploy/metrics_check.py" --name "$url" "$@" <"$work/scrape"
}

# metric_value CONTAINER_OR_EMPTY URL SERIES: the series' value in a scrape.
metric_value() {
    scrape "$1" "$2" | "$client_python" "$AETHER_REPO_ROOT/deploy/metrics_check.py" --value "$3"
}

# The scrape of every server of the Ansible cluster, from inside the container network
# (the master's container), after the walk-through, 5 `aether put`s and the S3 objects:
# each parses, and its key series are there with plausible values. The master's gauges
# come from a snapshot at most a second old, so this is polled.
ansible_metrics() {
    local objects c copies=0 n
    metrics_hold "$MASTER" "$master_url" \
        'aether_build_info{server="master"} == 1' \
        'aether_master_nodes{state="alive"} == 3' 'aether_master_nodes{state="dead"} == 0' \
        'aether_master_nodes_draining == 0' \
        'aether_master_objects >= 10' 'aether_master_object_bytes > 11000015' \
        'aether_master_under_replicated_objects == 0' 'aether_master_repairs_failed_total == 0' \
        'aether_http_requests_total{endpoint="InitUpload",status="200"} >= 6' \
        'aether_http_request_duration_seconds_count{endpoint="CompleteUpload"} >= 6' \
        'aether_master_db_commit_batch_size_count >= 6' || return 1
    objects=$(metric_value "$MASTER" "$master_url" aether_master_objects) || return 1
    for c in "${DATANODES[@]}"; do
        metrics_hold "$MASTER" "http://$c:42101" \
            'aether_build_info{server="datanode"} == 1' 'aether_datanode_objects >= 0' \
            'aether_datanode_disk_capacity_bytes > 0' 'aether_datanode_disk_free_bytes > 0' \
            'aether_datanode_disk_state{state="ok"} == 1' 'aether_datanode_disk_state{state="failed"} == 0' \
            'aether_datanode_scrub_corruptions_total == 0' || return 1
        n=$(metric_value "$MASTER" "http://$c:42101" aether_datanode_objects) || return 1
        copies=$((copies + ${n%.*}))
    done
    # Replication 2: the datanodes hold at least two copies of every object the master
    # counts (more while the copies of a replaced S3 key wait for deletion).
    ((copies >= 2 * ${objects%.*})) || { say "the datanodes hold $copies copies of $objects objects"; return 1; }
    say "the datanodes hold $copies copies of the master's $objects objects"
    # The gateway beside the master took the uploads (3 PUTs, one of them a replacement,
    # and 3 parts); the one beside datanode-2 served the reads, whole (200) and ranges (206).
    metrics_hold "$MASTER" "http://${GATEWAYS[0]}:$S3_PORT" \
        'aether_build_info{server="s3"} == 1' \
        'aether_http_requests_total{endpoint="PutObject",status="200"} >= 3' \
        'aether_http_requests_total{endpoint="UploadPart",status="200"} >= 3' \
        'aether_http_requests_total{endpoint="CompleteMultipartUpload",status="200"} >= 1' \
        'aether_http_received_bytes_total > 13000000' || return 1
    metrics_hold "$MASTER" "http://${GATEWAYS[1]}:$S3_PORT" \
        'aether_build_info{server="s3"} == 1' \
        'aether_http_requests_total{endpoint="GetObject",status="200"} >= 3' \
        'aether_http_requests_total{endpoint="GetObject",status="206"} >= 7' \
        'aether_http_sent_bytes_total > 13000000'
}

ansible_cluster_checks() {
    master_url=http://127.0.0.1:42100
    local nodes_json
    nodes_json=$(docker exec "$MASTER" curl -sf "$master_url/api/nodes")
    local registered
    registered=$(python3 -c 'import json, sys; print(" ".join(sorted("%s=%s" % (n["id"], n["address"]) for n in json.load(sys.stdin)["nodes"])))' <<<"$nodes_json")
    local expected=() c
    for c in "${DATANODES[@]}"; do expected+=("$c=http://$c:42101"); done
    check "the datanodes registered themselves under their ids and addresses" \
        test "$registered" == "${expected[*]}"
    check "aether nodes lists the three datanodes" bash -c \
        "[[ \$(docker exec -e AETHER_MASTER=$master_url $MASTER aether nodes | grep -c '$PREFIX-datanode-') == 3 ]]"
    check "the master runs with the optional settings rendered (AETHER_DEAD_AFTER)" \
        has_env "$MASTER" aether-master AETHER_DEAD_AFTER=12
    check "the datanodes run with the optional settings rendered (AETHER_HEARTBEAT_INTERVAL)" \
        has_env "${DATANODES[1]}" aether-datanode AETHER_HEARTBEAT_INTERVAL=3

    # The seed's walk-through, from the master host, with the deployed datanodes' own ids
    # and addresses (another id for an address already held would be refused).
    local walk_id
    # shellcheck disable=SC2086  # one argument per node
    walk_id=$(docker exec -i -e AETHER_CLUSTER_TOKEN="$cluster_token" "$MASTER" \
        bash -s -- "$master_url" $registered <"$AETHER_REPO_ROOT/deploy/walkthrough.sh" | tail -n 1) ||
        fail "the seed's curl walk-through works on the Ansible cluster"
    pass "the seed's curl walk-through works on the Ansible cluster"

    declare -gA object_sums=()
    check "aether put stores 5 objects through the deployed cluster" put_objects "$MASTER"
    check "aether get reads every object back" read_back_all "$MASTER"

    # S3: a key made on the master's host; boto3 puts through the gateway beside the
    # master and reads back through the one beside datanode-2 (stateless: they share
    # nothing but the master).
    check "the gateways run with their settings rendered (AETHER_THREADS)" \
        has_env "${GATEWAYS[1]}" aether-s3 AETHER_THREADS=32
    check "aether key create makes an S3 access key on the deployed master" s3_key "$MASTER" "$cluster_token"
    local gateway_urls=() c
    for c in "${GATEWAYS[@]}"; do gateway_urls+=("http://$(container_ip "$c"):$S3_PORT"); done
    check "boto3 puts objects (one multipart, one key replaced) through the gateway on ${GATEWAYS[0]}" \
        s3_roundtrip put "${gateway_urls[0]}"
    check "boto3 reads them back, whole and in ranges, through the gateway on ${GATEWAYS[1]}" \
        s3_roundtrip get "${gateway_urls[1]}"
    if ! wait_until 20 "every server's metrics" ansible_metrics; then
        ansible_metrics || true
        fail "every server's /metrics, scraped from inside the container network, has its key series"
    fi
    pass "every server's /metrics (master, 3 datanodes, 2 gateways), scraped from inside the container network, parses and has its key series with plausible values"

    local victim=${DATANODES[0]}
    local held
    held=$(objects_on "$victim" "$MASTER")
    say "$victim holds a replica of $held of ${#object_sums[@]} objects; stopping its container"
    docker stop "$victim" >/dev/null
    check "$victim is down" bash -c "! docker exec '$MASTER' curl -sf --max-time 2 http://$victim:42101/health"
    check "with $victim stopped, every object can still be read" read_back_all "$MASTER"
    check "with $victim stopped, the walk-through's object can still be read" \
        read_walkthrough_object "$walk_id" "$MASTER"
    for c in "${gateway_urls[@]}"; do
        check "with $victim stopped, boto3 reads every S3 object back through $c" s3_roundtrip get "$c"
    done
    # Its silence shows in the node states of the master's metrics (suspect after half of
    # aether_master_dead_after, 12 s here).
    check "the master's /metrics counts $victim no longer alive" wait_until 30 "$victim to leave the alive state" \
        metrics_hold "$MASTER" "$master_url" 'aether_master_nodes{state="alive"} == 2' \
        'aether_master_nodes == 3'
    ((held > 0)) || say "warning: $victim held no replica, so the read failover was not exercised"
}

# ---------------------------------------------------------------------------------------
# Stage: docker

ports_free() {
    local port
    for port in "${HOST_PORTS[@]}"; do
        if ss -Htln "sport = :$port" | grep -q .; then
            say "port $port on this machine is already in use"
            return 1
        fi
    done
}

compose_healthy() {
    local ids id
    ids=$(AETHER_IMAGE=$IMAGE "${compose[@]}" -p "$COMPOSE_PROJECT" -f "$AETHER_REPO_ROOT/docker-compose.yml" ps -q)
    [[ $(wc -w <<<"$ids") == 5 ]] || return 1
    for id in $ids; do
        [[ $(docker inspect -f '{{.State.Health.Status}}' "$id") == healthy ]] || return 1
    done
}

# compose_metrics S3_URL: the master's and the gateway's scrapes from this machine (the
# compose services are on its network) after the uploads of stage_docker.
compose_metrics() {
    metrics_hold "" "$master_url" 'aether_build_info{server="master"} == 1' \
        'aether_master_nodes{state="alive"} == 3' 'aether_master_objects >= 10' \
        'aether_master_under_replicated_objects == 0' &&
        metrics_hold "" "$1" 'aether_build_info{server="s3"} == 1' \
            'aether_http_requests_total{endpoint="PutObject",status="200"} >= 3' \
            'aether_http_requests_total{endpoint="UploadPart",status="200"} >= 3' \
            'aether_http_requests_total{endpoint="GetObject",status="206"} >= 7'
}

stage_docker() {
    check "ports ${HOST_PORTS[*]} are free on this machine" ports_free
    timed "docker build" docker build -q --build-arg "BASE_IMAGE=$base_image" -t "$IMAGE" "$AETHER_REPO_ROOT" >/dev/null
    check "the image runs aether as a non-root user, with a volume and a health check" bash -c "
        [[ \$(docker image inspect -f '{{.Config.User}}' $IMAGE) == aether:aether ]] &&
        [[ \$(docker image inspect -f '{{json .Config.Volumes}}' $IMAGE) == *'/var/lib/aether'* ]] &&
        [[ -n \$(docker image inspect -f '{{.Config.Healthcheck}}' $IMAGE) ]] &&
        [[ \$(docker run --rm --entrypoint id $IMAGE -u) != 0 ]]"
    say "image size: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')" \
        "(base $(docker image inspect -f '{{.Size}}' "$base_image" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"

    # The S3 gateway refuses to run without a cluster token (the master serves access keys
    # only with one), so the compose cluster gets one, as docker-compose.yml says; compose
    # reads it from the environment, and so do the aether commands run here against it.
    AETHER_CLUSTER_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    export AETHER_CLUSTER_TOKEN
    local up=(env AETHER_IMAGE="$IMAGE" "${compose[@]}" -p "$COMPOSE_PROJECT" -f "$AETHER_REPO_ROOT/docker-compose.yml")
    timed "compose up" "${up[@]}" up -d --no-build
    timed "compose: wait until healthy" wait_until 90 "the compose cluster to be healthy" compose_healthy ||
        { "${up[@]}" ps >&2; "${up[@]}" logs --tail 20 >&2; fail "the compose cluster becomes healthy"; }
    pass "docker compose up -d gives 5 healthy containers (master, 3 datanodes, S3 gateway; each health check is aether health)"

    master_url=http://localhost:42100
    local registered
    registered=$(curl -sf "$master_url/api/nodes" |
        python3 -c 'import json, sys; print(" ".join(sorted("%s=%s" % (n["id"], n["address"]) for n in json.load(sys.stdin)["nodes"])))')
    check "the compose datanodes registered as datanode-1..3 at localhost:42101..42103" test "$registered" == \
        "datanode-1=http://localhost:42101 datanode-2=http://localhost:42102 datanode-3=http://localhost:42103"

    # Verbatim: the uploads go to 42101 and 42102 whatever the placement said, five times.
    local walk_id run
    for run in 1 2 3 4 5; do
        walk_id=$(AETHER_WALKTHROUGH_VERBATIM=1 "$AETHER_REPO_ROOT/deploy/walkthrough.sh" "$master_url" \
            datanode-1=http://localhost:42101 datanode-2=http://localhost:42102 | tail -n 1) ||
            fail "the seed's curl walk-through works verbatim from this machine against compose (run $run)"
    done
    pass "the seed's curl walk-through works verbatim from this machine against compose (5 runs)"

    declare -gA object_sums=()
    check "aether put from this machine stores 5 objects in the compose cluster" put_objects ""
    check "aether get reads every object back" read_back_all ""

    # S3 on the gateway's port on this machine (the compose cluster's token is in this
    # shell's environment, for `aether key create` too).
    local s3_url=http://localhost:$S3_PORT
    check "aether key create makes an S3 access key in the compose cluster" s3_key "" "$AETHER_CLUSTER_TOKEN"
    check "boto3 puts objects (one multipart, one key replaced) through the compose gateway" s3_roundtrip put "$s3_url"
    check "boto3 reads them back, whole and in ranges, through the compose gateway" s3_roundtrip get "$s3_url"
    check "the compose master's and gateway's /metrics parse and count the traffic" \
        wait_until 20 "the compose cluster's metrics" compose_metrics "$s3_url"

    local held
    held=$(objects_on datanode-1 "")
    say "datanode-1 holds a replica of $held of ${#object_sums[@]} objects; stopping it"
    "${up[@]}" stop datanode-1 >/dev/null 2>&1
    check "with datanode-1 stopped, every object can still be read" read_back_all ""
    check "with datanode-1 stopped, the walk-through's object can still be read" \
        read_walkthrough_object "$walk_id" ""
    check "with datanode-1 stopped, boto3 reads every S3 object back through the compose gateway" \
        s3_roundtrip get "$s3_url"

    timed "compose down" "${up[@]}" down -v >/dev/null 2>&1
    check "compose down removed the containers" bash -c "[[ -z \$(${up[*]} ps -q) ]]"
}

# ---------------------------------------------------------------------------------------

say "stages: ${stages[*]}"
timed "install tools" setup_tools
timed "static binary" get_binary
if wants ansible; then
    timed "Debian package (deploy/build-deb.sh)" get_package
fi
if wants ansible || wants docker; then
    timed "S3 client and scrape parser" setup_clients
fi
if wants lint || wants ansible; then
    timed "Ansible virtualenv" setup_ansible
fi
if wants lint; then
    docker compose version >/dev/null 2>&1 && compose=(docker compose)
    ((${#compose[@]})) || { apt_install docker-compose; compose=(docker-compose); }
    timed "lint stage (total)" stage_lint
fi
if wants ansible || wants docker; then
    timed "base image (debootstrap, cached)" make_base_image
fi
if wants ansible; then
    timed "ansible stage (total)" stage_ansible
    [[ -n ${AETHER_KEEP:-} ]] || for c in "${HOSTS[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
fi
if wants docker; then
    if ((${#compose[@]} == 0)); then
        docker compose version >/dev/null 2>&1 && compose=(docker compose)
        ((${#compose[@]})) || { apt_install docker-compose; compose=(docker-compose); }
    fi
    say "compose tool: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || true))"
    timed "docker stage (total)" stage_docker
fi
