#!/usr/bin/env bash
# `make run`: the embedded JewelFS service plus ~/Jewel mounted on it, on this machine.
# First run: creates a user named after you and keeps its token in ~/.config/jewel/config.toml.
# Ctrl-C unmounts ~/Jewel (after pending uploads) and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
data="${JEWEL_DATA:-$HOME/.local/share/jewel}"
listen="${JEWEL_LISTEN:-127.0.0.1:7070}"
mountpoint="${JEWEL_MOUNT:-$HOME/Jewel}"
config_dir="$HOME/.config/jewel"
config="$config_dir/config.toml"

mkdir -p "$data" "$config_dir" "$mountpoint"
if mountpoint -q "$mountpoint"; then
  echo "$mountpoint is already mounted; run 'jewelfs unmount $mountpoint' first" >&2
  exit 1
fi

# Its own session: Ctrl-C reaches only the mount, which finishes uploads before the server stops.
setsid "$bin/jewel-server" serve --data "$data" --listen "$listen" &
server_pid=$!
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
trap stop_server EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://$listen/api/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done

if ! grep -q '^token' "$config" 2>/dev/null; then
  user="$(id -un | tr -c 'A-Za-z0-9._\n-' '-')"
  token="$("$bin/jewel-server" user add "$user" --data "$data" | tail -n 1)"
  umask 077
  printf 'server = "http://%s"\ntoken = "%s"\n' "$listen" "$token" > "$config"
  echo "created user $user; its token is kept in $config"
fi

echo "mounting $mountpoint (Ctrl-C to unmount and stop); portal: http://$listen/"
"$bin/jewelfs" mount "$mountpoint" --server "http://$listen"
