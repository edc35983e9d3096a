#!/bin/sh
# Start a private Docker engine for the sandbox's docker backend, unless one answers.
#
# Prints the one line to eval, e.g. `export DOCKER_HOST=unix:///var/lib/codeloop-docker/docker.sock`.
# Idempotent: an engine already answering at $DOCKER_HOST, at /var/run/docker.sock or at
# our own socket is reused. Our engine has no bridge, no iptables rules and no IP
# forwarding (sandbox containers run with network "none"), its own data root and socket,
# so it neither touches the host's network nor collides with a system dockerd.
#
# Usage (as root):  eval "$(scripts/start-docker.sh)"
# Env: CODELOOP_DOCKER_ROOT (default /var/lib/codeloop-docker).
set -eu

root="${CODELOOP_DOCKER_ROOT:-/var/lib/codeloop-docker}"
sock="$root/docker.sock"
log="$root/dockerd.log"

answers() {
    DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

for host in "${DOCKER_HOST:-}" "unix:///var/run/docker.sock" "unix://$sock"; do
    if [ -n "$host" ] && answers "$host"; then
        echo "export DOCKER_HOST=$host"
        exit 0
    fi
done

command -v dockerd >/dev/null 2>&1 || {
    echo "start-docker: dockerd not found; run scripts/install-sandbox-deps.sh" >&2
    exit 1
}
mkdir -p "$root/data" "$root/exec"
chmod 0711 "$root"
# A stale pid file from a killed engine blocks a restart.
if [ -f "$root/dockerd.pid" ] && ! kill -0 "$(cat "$root/dockerd.pid")" 2>/dev/null; then
    rm -f "$root/dockerd.pid"
fi

# setsid + nohup: the engine outlives this script and the CI step that ran it.
setsid nohup dockerd \
    --host "unix://$sock" \
    --data-root "$root/data" \
    --exec-root "$root/exec" \
    --pidfile "$root/dockerd.pid" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --userland-proxy=false \
    --log-level=warn \
    >"$log" 2>&1 </dev/null &

i=0
while [ $i -lt 300 ]; do
    if answers "unix://$sock"; then
        echo "export DOCKER_HOST=unix://$sock"
        exit 0
    fi
    i=$((i + 1))
    sleep 0.1
done
echo "start-docker: dockerd did not answer within 30 s; see $log:" >&2
tail -n 20 "$log" >&2
exit 1
