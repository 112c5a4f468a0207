#!/usr/bin/env bash
# `make run`: the embedded JewelFS service plus ~/Jewel mounted on it, on this machine.
# First run: creates a user named after you and keeps its token in ~/.config/jewel/config.toml.
# Ctrl-C unmounts ~/Jewel (after pending uploads) and stops the server.
# The server's log goes to <data>/server.log; `make run VERBOSE=1` (JEWEL_VERBOSE=1) shows it
# here instead, with a line for every request.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
data="${JEWEL_DATA:-$HOME/.local/share/jewel}"
listen="${JEWEL_LISTEN:-127.0.0.1:7070}"
mountpoint="${JEWEL_MOUNT:-$HOME/Jewel}"
verbose="${JEWEL_VERBOSE:-}"
config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/jewel"
config="$config_dir/config.toml"
server_log="$data/server.log"

mkdir -p "$data" "$config_dir" "$mountpoint"
if mountpoint -q "$mountpoint"; then
  echo "$mountpoint is already mounted; run 'jewelfs unmount $mountpoint' first" >&2
  exit 1
fi

# Its own session: Ctrl-C reaches only the mount, which finishes uploads before the server stops.
if [[ -n "$verbose" && "$verbose" != 0 ]]; then
  setsid "$bin/jewel-server" serve --data "$data" --listen "$listen" --verbose &
else
  setsid "$bin/jewel-server" serve --data "$data" --listen "$listen" >>"$server_log" 2>&1 &
fi
server_pid=$!
watch_pid=""
stop() {
  [[ -n "$watch_pid" ]] && kill "$watch_pid" 2>/dev/null || true
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://$listen/api/v1/health" >/dev/null 2>&1 && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "jewel-server did not start; the end of $server_log:" >&2
    tail -n 20 "$server_log" >&2 || true
    exit 1
  fi
  sleep 0.1
done

if ! grep -q '^token' "$config" 2>/dev/null; then
  user="$(id -un | tr -c 'A-Za-z0-9._\n-' '-')"
  token="$("$bin/jewel-server" user add "$user" --data "$data" | tail -n 1)"
  umask 077
  printf 'server = "http://%s"\ntoken = "%s"\n' "$listen" "$token" > "$config"
  echo "created user $user; its token is kept in $config"
fi

echo "server: http://$listen/ (web portal; sign in with the token in $config)"
[[ -z "$verbose" || "$verbose" == 0 ]] && echo "server log: $server_log (make run VERBOSE=1 to show every request here)"
echo "to mount $mountpoint at every login instead: $bin/jewelfs service install"
echo "  (it uses the server in $config; run that server as a service too: docs/jewel-server.service)"
echo "mounting $mountpoint (Ctrl-C to unmount and stop)"
# A line whenever the drive's state changes (uploads, going offline), not one per request.
"$bin/jewelfs" status --watch "$mountpoint" &
watch_pid=$!
"$bin/jewelfs" mount "$mountpoint" --server "http://$listen"
