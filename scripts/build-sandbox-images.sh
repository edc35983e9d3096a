#!/bin/sh
# Build the docker backend's images: codeloop/sandbox-{python,node,java}:1.
#
#   scripts/build-sandbox-images.sh            offline (CI, no registry): `docker import` of
#                                              a minimal rootfs staged from this host's
#                                              runtimes (workers/sandbox/rootfs.py)
#   scripts/build-sandbox-images.sh --official `docker build` of workers/sandbox/images/
#                                              *.Dockerfile, FROM the official slim images
#
# Idempotent: an image built from the same inputs (the files below, the host's runtime
# versions) is kept; FORCE=1 rebuilds anyway. Needs DOCKER_HOST (or the
# default socket) to reach an engine: eval "$(scripts/start-docker.sh)" first, and
# scripts/install-sandbox-deps.sh before that (the node image copies its npm tools).
# Env: CODELOOP_SANDBOX_TOOLS_DIR, PYTHON (an interpreter; default python3), FORCE=1,
#      TAG (default 1).
set -eu

here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${CODELOOP_SANDBOX_TOOLS_DIR:-/opt/codeloop/sandbox-tools}"
tag="${TAG:-1}"
mode="${1:-host}"
py="${PYTHON:-python3}"

docker version --format '{{.Server.Version}}' >/dev/null || {
    echo "build-sandbox-images: no Docker engine answers (eval \"\$(scripts/start-docker.sh)\")" >&2
    exit 1
}

inputs="$(
    cd "$here/workers/sandbox" &&
        cat rootfs.py runtimes.py node/package-lock.json images/*.Dockerfile &&
        echo "$mode" && ls -l "$tools/node_modules" 2>/dev/null &&
        { /usr/bin/python3 --version; node --version; java -version; "$py" -m ruff --version; } 2>&1
)"
digest="$(printf '%s' "$inputs" | sha256sum | cut -c1-16)"

for family in python node java; do
    image="codeloop/sandbox-$family:$tag"
    have="$(docker image inspect -f '{{index .Config.Labels "org.codeloop.inputs"}}' "$image" 2>/dev/null || true)"
    if [ "${FORCE:-0}" != 1 ] && [ "$have" = "$digest" ]; then
        echo "build-sandbox-images: $image is up to date"
        continue
    fi
    if [ "$mode" = "--official" ]; then
        context="$here/workers/sandbox"
        docker build -q -t "$image" --label "org.codeloop.inputs=$digest" \
            -f "$context/images/$family.Dockerfile" "$context" >/dev/null
    else
        stage="$(mktemp -d /var/tmp/codeloop-rootfs.XXXXXX)"
        trap 'rm -rf "$stage"' EXIT
        (cd "$here" && "$py" -m workers.sandbox.rootfs "$family" "$stage/root" --tools-dir "$tools")
        tar -C "$stage/root" --numeric-owner --owner=0 --group=0 -c . |
            docker import \
                --change 'USER 65534:65534' \
                --change 'WORKDIR /tmp' \
                --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME=/tmp' \
                --change "LABEL org.codeloop.sandbox=$family org.codeloop.inputs=$digest" \
                - "$image" >/dev/null
        rm -rf "$stage"
        trap - EXIT
    fi
    echo "build-sandbox-images: built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
done
# The images these replaced, now untagged.
docker image prune -f --filter "label=org.codeloop.inputs" >/dev/null
