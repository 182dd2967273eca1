#!/usr/bin/env bash
# Installs what the app's browser test needs: Debian chromium (+ driver) for Playwright. Idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || true)"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO flock /tmp/apt.lock apt-get update -qq || true
$SUDO flock /tmp/apt.lock apt-get install -y -qq chromium chromium-driver
/usr/bin/chromium --version
