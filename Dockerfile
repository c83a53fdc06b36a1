# syntax=docker/dockerfile:1
#
# legate — an outbound HTTP proxy sidecar (ambassador).
#
#   docker build -t legate:local .
#
# Base image: Debian bookworm-slim rather than Alpine. Node's Alpine builds are
# an "experimental" tier upstream (musl), while glibc builds are tier 1; legate
# resolves upstream hosts through getaddrinfo (Kubernetes search domains,
# ndots) and does DNS discovery, where glibc behaves exactly as every other
# workload on the node does. The size difference (~25 MB compressed) is not
# worth a second libc to debug at 3 a.m. For production, pin the base image by
# digest: --build-arg NODE_IMAGE=node:24-bookworm-slim@sha256:...
ARG NODE_IMAGE=node:24-bookworm-slim

# ---------------------------------------------------------------- build ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
# Dependencies first, so the layer is reused until the lockfile changes.
# --ignore-scripts: `prepare` would build before the sources are copied; the
# build runs explicitly below, and no dependency needs an install script.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The JSON Schema is generated from the sources, so the image always ships
# the one that matches the code (it need not be committed).
RUN npm run build && npm run schema

# -------------------------------------------------------------- runtime ----
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# Production dependencies only, no install scripts; files stay owned by root
# so the running process cannot modify its own code.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force \
 && rm -rf /root/.npm /tmp/*
COPY --from=build /app/dist ./dist
COPY --from=build /app/schema ./schema

# The image's `node` user, by number: Kubernetes can only enforce
# `runAsNonRoot: true` when the image's user is numeric.
USER 1000:1000

# 15001: the proxy the app calls; 15000: admin (/healthz, /readyz, /metrics, /config).
# legate binds both to 127.0.0.1 unless routes.yaml says otherwise, which is
# right for a sidecar that shares the app's network namespace (Kubernetes pod,
# `network_mode: service:app`). Publishing 15001 from a standalone container
# (`docker run -p`) only works with `listen: 0.0.0.0:15001` in routes.yaml.
EXPOSE 15001 15000

# Docker only (Kubernetes ignores HEALTHCHECK and uses the probes in
# deploy/kubernetes). Node itself makes the request: slim images have no curl.
# LEGATE_HEALTH_URL overrides the address when routes.yaml moves `admin:`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.LEGATE_HEALTH_URL||'http://127.0.0.1:15000/healthz',{signal:AbortSignal.timeout(2000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# legate is PID 1 and handles SIGTERM itself: readiness goes 503, listeners
# close, in-flight requests get up to drainTimeout (default 10s), exit 0.
# Give `docker stop -t` / compose `stop_grace_period` more than drainTimeout.
STOPSIGNAL SIGTERM
# --no-maglev: Node 24 compiles hot code with a third JIT tier, Maglev. In
# legate its code and compiler memory cost 10-17 MiB of RSS with 1,000 idle
# connections (126-133 -> 116 MiB on Node 24.21) and bought no throughput in
# `npm run bench` A/B runs; a sidecar runs in every pod, so memory wins.
# docs/benchmarks.md "Memory" has the figures.
# --v8-pool-size=1: one V8 helper thread for concurrent GC and background
# compilation instead of Node's default four. A sidecar gets a core or less;
# four helpers there only take turns with the thread serving requests, and
# each one keeps its own malloc arena after compiling undici's WebAssembly
# parser (3-5 MiB of RSS in all).
# --max-semi-space-size=8: V8's young generation, pinned. Unpinned, Node sizes
# it from the memory it sees: under a 128Mi container limit 1-2 MiB
# semi-spaces, and in 30 s of load V8 then ran 73-114 mark-compacts where
# this runs 8-10, and legate served 25-52% fewer 16 KiB requests; with no
# limit on Node 24, 64 MiB ones, and 222-244 MiB of RSS under load. It is in
# NODE_OPTIONS, not the ENTRYPOINT, so a pod can size it for its own limit
# (flags on the command line would win over NODE_OPTIONS); a pod that sets
# NODE_OPTIONS replaces this value, so keep the flag in it
# (deploy/kubernetes/deployment.yaml does). docs/benchmarks.md "Memory" has
# the figures.
ENV NODE_OPTIONS=--max-semi-space-size=8
ENTRYPOINT ["node", "--no-maglev", "--v8-pool-size=1", "/app/dist/cli.js"]
CMD ["--config", "/etc/legate/routes.yaml"]
