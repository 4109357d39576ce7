#!/usr/bin/env bash
# Installs what the test suite needs from the OS, only when it is missing:
# PostgreSQL server binaries (unless SYNCLINE_TEST_PG_DSN names a server) and
# Chromium for the dashboard test (driven by Playwright; no browser download).
set -euo pipefail
missing=()
if [ -z "${SYNCLINE_TEST_PG_DSN:-}" ] \
  && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ! -x /usr/bin/chromium ]; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "system-deps: installing ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
