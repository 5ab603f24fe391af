#!/bin/bash
# The image's HEALTHCHECK: asks the server in this container for GET /health and
# succeeds on a 200. Uses bash's /dev/tcp, so the image needs no curl.
# The address is AETHER_LISTEN's (a wildcard address is asked at 127.0.0.1), else the
# role's default port (42101 for a datanode, 42100 for the master) on 127.0.0.1; the
# role is read from the command line of the container's main process.
set -u
listen=${AETHER_LISTEN:-}
host=127.0.0.1
if [[ -n $listen ]]; then
    port=${listen##*:}
    bound=${listen%:*}
    bound=${bound#[}
    bound=${bound%]}
    [[ -n $bound && $bound != 0.0.0.0 && $bound != :: ]] && host=$bound
elif tr '\0' ' ' </proc/1/cmdline | grep -qw datanode; then
    port=42101
else
    port=42100
fi
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 5 status_line <&3 || exit 1
[[ $status_line == HTTP/1.[01]\ 200* ]]
