#!/bin/bash
# The image's HEALTHCHECK: asks the server in this container for GET /health and
# succeeds on a 200. Uses bash's /dev/tcp, so the image needs no curl.
# The port is AETHER_LISTEN's, else the role's default (42101 for a datanode, 42100 for
# the master), read from the command line of the container's main process.
set -u
listen=${AETHER_LISTEN:-}
if [[ -n $listen ]]; then
    port=${listen##*:}
elif tr '\0' ' ' </proc/1/cmdline | grep -qw datanode; then
    port=42101
else
    port=42100
fi
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 5 status_line <&3 || exit 1
[[ $status_line == HTTP/1.[01]\ 200* ]]
