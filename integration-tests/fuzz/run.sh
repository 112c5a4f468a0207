#!/usr/bin/env bash
# API fuzzing: schemathesis against a real jewel-server, driven by the OpenAPI description the
# server itself serves (GET /api/v1/openapi.json).
#
# Starts jewel-server on a free loopback port with a fresh data folder, adds a user, runs
# schemathesis with that user's token over every described operation, stops the server. Fails
# on any 5xx ("not a server error"), on an answer that does not match its documented schema,
# status or content type, and if the server process dies. Short by default (CI); longer with
#   JEWEL_FUZZ_EXAMPLES=200 JEWEL_FUZZ_TIME=900 integration-tests/fuzz/run.sh
#
# Needs: the debug jewel-server (cargo build -p backend-lambda --bin jewel-server) and the
# venv .venv-fuzz with schemathesis (make setup-fuzz).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
server_bin="${JEWEL_SERVER_BIN:-$target/debug/jewel-server}"
st="${JEWEL_FUZZ_VENV:-$root/.venv-fuzz}/bin/schemathesis"
examples="${JEWEL_FUZZ_EXAMPLES:-25}"
max_time="${JEWEL_FUZZ_TIME:-90}"
seed="${JEWEL_FUZZ_SEED:-$RANDOM}"

[[ -x "$server_bin" ]] || { echo "fuzz: $server_bin is missing: cargo build -p backend-lambda --bin jewel-server" >&2; exit 1; }
[[ -x "$st" ]] || { echo "fuzz: schemathesis is missing: make setup-fuzz" >&2; exit 1; }

work="$(mktemp -d)"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
token="$("$server_bin" user add fuzzer --data "$work/data" | tail -n 1)"
RUST_LOG=warn "$server_bin" serve --data "$work/data" --listen "$addr" 2>"$work/server.log" &
pid=$!
# The token goes to the tools through the environment, never on a command line (which every
# local user can read in /proc).
export JEWEL_FUZZ_TOKEN="$token"
# (python3 rather than curl: it is there wherever the venv is.)
http() {
  python3 - "$@" <<'PY'
import os, sys, urllib.request
url, body = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=body.encode() or None,
    headers={"Authorization": "Bearer " + os.environ["JEWEL_FUZZ_TOKEN"], "Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=5).read()
PY
}
for _ in $(seq 1 100); do
  http "http://$addr/api/v1/health" "" 2>/dev/null && break
  sleep 0.1
done
http "http://$addr/api/v1/health" "" || { echo "fuzz: jewel-server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

# Something to find besides the root (id 1, the schema's example): node ids are random, so
# the fuzzer mostly meets 404s below the root, which is what a stranger would meet too.
http "http://$addr/api/v1/nodes" '{"parent":1,"name":"docs","kind":"dir"}'
# schemathesis reads the header from its config file, which names the variable.
printf 'headers = { Authorization = "Bearer ${JEWEL_FUZZ_TOKEN}" }\n' > "$work/schemathesis.toml"

# The "examples" phase is left out: the description has one example (the root id), and
# coverage, fuzzing and stateful runs cover the same operations. One worker: with two,
# hypothesis' lambda-source cache is used from two threads at once and fails inside
# hypothesis now and then ("AST constructor recursion depth mismatch", a KeyError in
# lambda_sources.py) — an error of the tool, not a finding about the server.
echo "==> schemathesis: $examples examples per operation, at most ${max_time}s, seed $seed"
status=0
"$st" --config-file "$work/schemathesis.toml" run "http://$addr/api/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" \
  --max-time "$max_time" \
  --seed "$seed" \
  --request-timeout 30 \
  --workers 1 \
  --suppress-health-check all \
  --phases coverage,fuzzing,stateful \
  --no-color \
  --report junit --report-dir "$work/report" \
  || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
  echo "fuzz: jewel-server died during the run" >&2
  cat "$work/server.log" >&2
  exit 1
fi
if grep -q "panicked" "$work/server.log"; then
  echo "fuzz: jewel-server panicked:" >&2
  grep -A5 panicked "$work/server.log" >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "fuzz: schemathesis found failures (seed $seed; replay with JEWEL_FUZZ_SEED=$seed)" >&2
  exit "$status"
fi
echo "==> fuzz: no server errors, no schema violations, server alive (seed $seed)"
