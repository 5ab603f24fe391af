#!/bin/bash
# The image's HEALTHCHECK: `aether health` against the server in this container, which
# succeeds only on a 200 from GET /health with status "ok" and says why otherwise (Docker
# keeps that line in the container's health log; see `docker inspect`).
# The address is AETHER_LISTEN's (a wildcard address is asked at 127.0.0.1), else the
# role's default port (42101 for a datanode, 9000 for the S3 gateway, 42100 for the
# master) on 127.0.0.1; the role is read from the command line of the container's main
# process.
set -u
listen=${AETHER_LISTEN:-}
host=127.0.0.1
if [[ -n $listen ]]; then
    port=${listen##*:}
    bound=${listen%:*}
    bound=${bound#[}
    bound=${bound%]}
    [[ -n $bound && $bound != 0.0.0.0 && $bound != :: ]] && host=$bound
else
    case " $(tr '\0' ' ' </proc/1/cmdline) " in
        *" datanode "*) port=42101 ;;
        *" s3 "*) port=9000 ;;
        *) port=42100 ;;
    esac
fi
[[ $host == *:* ]] && host="[$host]"
exec aether health --timeout 4 "http://$host:$port"
