# shellcheck shell=bash
# Helpers shared by the deploy scripts: logging, timing, polling with a deadline, and
# finding the Debian mirror this machine's apt already uses. Sourced, never run.

export AETHER_REPO_ROOT
AETHER_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AETHER_CACHE_DIR=${AETHER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aether-deploy}

say() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "${AETHER_LOG_TAG:-deploy}" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# wait_until SECONDS DESCRIPTION COMMAND...: runs COMMAND every half second until it
# succeeds; fails (returns 1) once SECONDS have passed.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "gave up after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 0.5
    done
}

# Runs apt-get install for the packages that are missing (and apt-get update once).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing Debian packages: ${missing[*]}"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    if [[ -z ${AETHER_APT_UPDATED:-} ]]; then
        "${sudo[@]}" apt-get update -qq >&2
        AETHER_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Prints the URL of the Debian archive this machine's apt is configured with, for the
# suite SUITE (e.g. bookworm), read from its sources (deb822 *.sources or one-line
# *.list). AETHER_DEBIAN_MIRROR overrides it.
debian_mirror() {
    local suite=$1
    if [[ -n ${AETHER_DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "$AETHER_DEBIAN_MIRROR"
        return
    fi
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 1
    local found
    found=$(
        for f in "${files[@]}"; do
            if [[ $f == *.sources ]]; then
                # deb822: one stanza per paragraph; take the first URI of a stanza of
                # type deb whose Suites name SUITE itself (not SUITE-security).
                awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
                {
                    types = ""; uris = ""; suites = ""; enabled = "yes"
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (line ~ /^[ \t]*#/) continue
                        if (line ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", line);   types = line }
                        if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line);    uris = line }
                        if (line ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", line);  suites = line }
                        if (line ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", line); enabled = line }
                    }
                    if (enabled == "no" || (" " types " ") !~ / deb /) next
                    n = split(suites, s, /[ \t]+/)
                    for (j = 1; j <= n; j++) if (s[j] == suite) { split(uris, u, /[ \t]+/); print u[1]; exit }
                }' "$f"
            else
                # One-line style: deb [options] URI SUITE COMPONENTS...
                awk -v suite="$suite" '
                    $1 == "deb" {
                        i = 2
                        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                        if ($(i + 1) == suite) { print $i; exit }
                    }' "$f"
            fi
        done | head -n 1
    )
    [[ -n $found ]] || return 1
    printf '%s\n' "${found%/}"
}

# Prints a stage's duration and adds it to the timing table printed at the end.
AETHER_TIMINGS=()
timed() {
    local name=$1
    shift
    local start=$SECONDS
    say "== $name"
    "$@"
    local rc=$?
    AETHER_TIMINGS+=("$(printf '%-52s %4ss' "$name" $((SECONDS - start)))")
    return $rc
}

print_timings() {
    local line
    say "timings:"
    for line in "${AETHER_TIMINGS[@]}"; do
        printf '    %s\n' "$line" >&2
    done
}
