#!/usr/bin/env bash
# Installs what the test suite needs from the OS, only when it is missing.
set -euo pipefail
if [ -n "${SYNCLINE_TEST_PG_DSN:-}" ]; then exit 0; fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
echo "system-deps: PostgreSQL server binaries not found; installing them" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
