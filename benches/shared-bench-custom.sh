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
# users run it). CREDPROXY_BENCH_USAGE=on adds a usage log, prices and two quotas that
# every request is checked against (never reached); =redis also shares the counters
# through the Redis server at CREDPROXY_BENCH_REDIS (redis://127.0.0.1:6379/0 by default).
# CREDPROXY_BENCH_HTTP2 sets the route's upstream_http2 (auto by default: ALPN decides).
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
upstream_http2 = "${CREDPROXY_BENCH_HTTP2:-auto}"
TOML
usage_mode="${CREDPROXY_BENCH_USAGE:-default}"
if [ "$usage_mode" = on ] || [ "$usage_mode" = redis ]; then
  store_line=""
  [ "$usage_mode" = redis ] && store_line="store = \"${CREDPROXY_BENCH_REDIS:-redis://127.0.0.1:6379/0}\""
  cat >> "$config" <<TOML
[usage]
log = "$(dirname "$config")/usage.jsonl"
state_dir = "$(dirname "$config")/state"
$store_line
[prices."claude-*"]
input = 3
output = 15
cache_read = 0.3
cache_write = 3.75
[[quotas]]
name = "bench-rate"
requests_per_minute = 100000000
tokens_per_minute = 100000000000
[[quotas]]
name = "bench-spend"
per = "all"
spend_per_day = 1000000000
TOML
fi
filter="info"
[ "${CREDPROXY_BENCH_ACCESS_LOG:-on}" = off ] && filter="info,credproxy::access=off"
export CREDPROXY_LOG="$filter"
exec "$binary" --config "$config" 2>>"${CREDPROXY_BENCH_LOG:-/dev/null}"
