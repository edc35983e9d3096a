#!/bin/sh
# Install what the sandbox needs on a fresh Debian/Ubuntu host. Idempotent; run as root.
#
#   bubblewrap, util-linux (setpriv, prlimit)  the process backend
#   libseccomp2                                pyseccomp's library
#   docker.io                                  the docker backend's engine (skip: NO_DOCKER=1)
#   python3, nodejs, a JDK, checkstyle         the runtimes and the Java linter (all under
#                                              /usr: the process sandbox binds only /usr)
#   workers/sandbox/node (npm ci)              esbuild, React, ESLint 9, typescript-eslint,
#                                              pinned by package-lock.json, into
#                                              $CODELOOP_SANDBOX_TOOLS_DIR
#
# Env: CODELOOP_SANDBOX_TOOLS_DIR (default /opt/codeloop/sandbox-tools), NO_DOCKER=1.
set -eu

here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${CODELOOP_SANDBOX_TOOLS_DIR:-/opt/codeloop/sandbox-tools}"
src="$here/workers/sandbox/node"

packages="bubblewrap util-linux libseccomp2 python3 checkstyle ca-certificates"
# javac, not just java: the source launcher (java Main.java) needs the compiler module.
command -v javac >/dev/null 2>&1 || packages="$packages openjdk-17-jdk-headless"
command -v node >/dev/null 2>&1 || packages="$packages nodejs npm"
[ "${NO_DOCKER:-0}" = 1 ] || command -v dockerd >/dev/null 2>&1 || packages="$packages docker.io"

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || { echo "install-sandbox-deps: node >= 18 needed, found $node_major" >&2; exit 1; }

# npm tools: reinstall only when the lock file changed.
mkdir -p "$tools"
if ! cmp -s "$src/package-lock.json" "$tools/package-lock.json" || [ ! -d "$tools/node_modules" ]; then
    cp "$src/package.json" "$src/package-lock.json" "$tools/"
    # --ignore-scripts: no install script of any dependency runs as root here.
    (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
cp "$src/eslint.config.mjs" "$src/eslint.ts.config.mjs" "$tools/"
mkdir -p "$tools/bin"
native="$(ls "$tools"/node_modules/@esbuild/*/bin/esbuild | head -n 1)"
ln -sfn "../${native#"$tools/"}" "$tools/bin/esbuild"
"$tools/bin/esbuild" --version >/dev/null
chmod -R a+rX,go-w "$tools"

echo "install-sandbox-deps: ok (tools in $tools)"
