#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test: Debian's package, driven by the
# `playwright` Python package (never `playwright install`). Idempotent.
set -euo pipefail
CHROMIUM=/usr/bin/chromium

install() {
  if [[ -x "$CHROMIUM" ]]; then echo "chromium present: $CHROMIUM"; return; fi
  local sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
  [[ -x "$CHROMIUM" ]] || { echo "chromium did not install at $CHROMIUM" >&2; exit 1; }
  echo "chromium installed: $CHROMIUM"
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
