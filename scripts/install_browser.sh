#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/test_report.py): Debian's chromium and chromium-driver
# (/usr/bin/chromium, /usr/bin/chromedriver), which selenium drives without downloading anything.
#   bash scripts/install_browser.sh
# Needs root (or sudo) and apt. Does nothing when both are installed; asks apt for a fresh package list only if
# the install fails without one.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install_browser.sh: no apt-get here; install Chromium and its chromedriver with this system's packages" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver > /dev/null; then
  $SUDO apt-get update -q > /dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver > /dev/null
fi
echo "installed $(/usr/bin/chromium --version) and $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)"
