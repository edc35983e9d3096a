# codeloop/sandbox-node: the official slim image plus the pinned npm tools that
# TypeScript/JSX runs (esbuild bundles React into the program) and ESLint need inside
# the sandbox, at /opt/codeloop as in the process backend.
# Build: scripts/build-sandbox-images.sh --official (context: workers/sandbox).
FROM node:20-slim
COPY node/package.json node/package-lock.json node/eslint.config.mjs node/eslint.ts.config.mjs /opt/codeloop/
RUN cd /opt/codeloop \
    && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
    && mkdir bin \
    && ln -s ../node_modules/@esbuild/linux-*/bin/esbuild bin/esbuild \
    && bin/esbuild --version
USER 65534:65534
WORKDIR /tmp
