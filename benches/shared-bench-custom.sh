#!/usr/bin/env bash
# credproxy in the `custom` slot of the side-by-side proxy benchmark (../shared/bench):
#
#   cargo build --release --locked
#   BENCH_CUSTOM_NAME=credproxy BENCH_CUSTOM_CMD="$PWD/benches/shared-bench-custom.sh" \
#     bash ../shared/bench/run.sh
#
# The harness exports BENCH_LISTEN (127.0.0.1:port), BENCH_UPSTREAM_URL and BENCH_API_KEY,
# runs this in a folder of its own and stops it by process id: hence `exec`.
# CREDPROXY_BENCH_ACCESS_LOG=off drops the per-request access log line (default: on, as
# users run it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${CREDPROXY_BIN:-$here/target/release/credproxy}"
config="$(mktemp -d)/credproxy.toml"
# With --upstream-tls the mock's throwaway CA is trusted through `ca_file`. The harness
# holds up to 5,000 streams open (--phases streams): room for them all, as nginx has.
ca_line=""
[ -n "${BENCH_UPSTREAM_CA:-}" ] && ca_line="ca_file = \"$BENCH_UPSTREAM_CA\""
cat > "$config" <<TOML
listen = "${BENCH_LISTEN:?}"
max_connections = 16384
max_in_flight = 16384
$ca_line
[credentials.bench]
kind = "api_key"
env = "BENCH_API_KEY"
[[routes]]
prefix = "/"
upstream = "${BENCH_UPSTREAM_URL:?}"
credential = "bench"
TOML
filter="info"
[ "${CREDPROXY_BENCH_ACCESS_LOG:-on}" = off ] && filter="info,credproxy::access=off"
export CREDPROXY_LOG="$filter"
exec "$binary" --config "$config" 2>>"${CREDPROXY_BENCH_LOG:-/dev/null}"
