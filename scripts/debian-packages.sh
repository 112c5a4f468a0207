#!/usr/bin/env bash
# Installs the Debian packages that are missing, and only those, saying which and why.
#
#   scripts/debian-packages.sh PACKAGE=PROBE ...
#
# PROBE says how to tell the package's part is already there:
#   a command name     (fusermount3)        found on PATH
#   an absolute path   (/usr/bin/chromium)  exists
#   py:MODULE          (py:ensurepip)       `python3 -c 'import MODULE'` succeeds
# A part that is there, however it was installed (Node.js from another source, a browser
# built by hand), is left alone: apt is asked only for what is missing, each package by its
# own name, after one `apt-get update`. Runs apt through sudo when not root.
set -euo pipefail

present() {
  local probe="$1"
  case "$probe" in
    py:*) python3 -c "import ${probe#py:}" >/dev/null 2>&1 ;;
    /*) [[ -e "$probe" ]] ;;
    *) command -v "$probe" >/dev/null 2>&1 ;;
  esac
}

missing=()
reasons=()
for need in "$@"; do
  package="${need%%=*}"
  probe="${need#*=}"
  if ! present "$probe"; then
    missing+=("$package")
    reasons+=("$package (for $probe)")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "==> installing Debian packages: ${reasons[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "!!! not root and no sudo: install them by hand: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq
if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; then
  echo "!!! apt-get could not install: ${missing[*]} (see its message above)" >&2
  exit 1
fi
for need in "$@"; do
  probe="${need#*=}"
  if ! present "$probe"; then
    echo "!!! ${need%%=*} is installed but $probe is still missing" >&2
    exit 1
  fi
done
