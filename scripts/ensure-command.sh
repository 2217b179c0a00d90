#!/usr/bin/env bash
# Usage: ensure-command.sh COMMAND DEBIAN_PACKAGE
# Make sure COMMAND is on PATH: install the Debian package when it is missing and that is
# possible (root, or sudo), otherwise say exactly what to install.
set -euo pipefail
cmd="$1"
pkg="$2"
command -v "$cmd" >/dev/null 2>&1 && exit 0

echo "$cmd not found; installing Debian's $pkg package..." >&2
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q "$pkg" >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$pkg" >/dev/null; }
    command -v "$cmd" >/dev/null 2>&1 && exit 0
  fi
fi
cat >&2 <<MSG
Could not install $cmd. Install it yourself, then run this again:
  Debian/Ubuntu: sudo apt-get install $pkg
  macOS:         brew install $pkg
MSG
exit 1
