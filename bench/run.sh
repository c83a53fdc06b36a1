#!/usr/bin/env bash
# npm run bench — legate against direct, nginx and a bare http-proxy, in one run.
#
# 1. Installs what the bench needs when it is missing: wrk and nginx (and
#    openssl, taskset) from Debian's packages, node_modules, and dist/.
# 2. Runs bench/bench.mjs in its own process group and, whatever happens
#    (success, failure, Ctrl-C), ends that whole group on exit, so no
#    upstream, proxy or load generator outlives the run.
#
# Everything listens on and talks to 127.0.0.1 only. Arguments are passed on
# to bench.mjs (`npm run bench -- --profile` profiles legate's full chain: its CPU, or
# with BENCH_PROFILE_KIND=alloc what each request allocates).
# Settings are environment variables, listed at the top of bench/bench.mjs:
#   BENCH_QUICK=1 npm run bench        smoke run, about a minute
#   BENCH_REPEATS=3 npm run bench      fewer repeats (5 by default), about 4 minutes less
#   BENCH_SOAK_SECONDS=0 npm run bench no soak
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- tools from Debian's packages, installed only when missing
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# nginx lives in /usr/sbin, which a non-login PATH may lack.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench: missing ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "bench: installing ${missing[*]} from Debian's packages" >&2
  # Installing nginx does not start a system nginx here: /usr/sbin/policy-rc.d
  # forbids service starts. The bench runs its own nginx from a temp dir.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- legate itself
[ -d node_modules/http-proxy ] || npm ci --no-audit --no-fund
if [ ! -f dist/cli.js ]; then
  echo "bench: dist/ missing, building legate" >&2
  npm run build
elif [ -n "$(find src -newer dist/cli.js -name '*.ts' -print -quit)" ]; then
  # Not rebuilt on purpose: others may be mid-edit. The run measures dist/ as it is.
  echo "bench: note: src/ has files newer than dist/cli.js; run 'npm run build' to measure them" >&2
fi

# ---- the run, in its own process group
# The temp dir (configs, certificates, logs) is made here so that it goes even
# if the harness is killed outright.
BENCH_TMP=$(mktemp -d /tmp/legate-bench-XXXXXX)
export BENCH_TMP

# With job control on, a background job gets a process group of its own
# (pgid = its pid): the trap can then end it and everything it started, by id.
set -m
# The harness sits with the load side on core 0 (it pins each child itself).
pin=()
if [ "$(nproc --all)" -ge 2 ]; then pin=(taskset -c 0); fi
"${pin[@]}" node bench/bench.mjs "$@" &
bench_pid=$!

cleanup() {
  trap - EXIT INT TERM
  if kill -0 -- "-$bench_pid" 2>/dev/null; then
    kill -TERM -- "-$bench_pid" 2>/dev/null || true
    # The harness stops its children on SIGTERM; give it a few seconds, then force.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 -- "-$bench_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$bench_pid" 2>/dev/null || true
  fi
  if [ "${BENCH_KEEP_TMP:-}" != 1 ]; then rm -rf "$BENCH_TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status=0
wait "$bench_pid" || status=$?
exit "$status"
