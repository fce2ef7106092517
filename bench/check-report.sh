#!/usr/bin/env bash
# Renders a run's report.html in headless Chromium and saves a screenshot, to check the page a
# person opens. Usage: bench/check-report.sh [PROJECT_DIR] [OUT.png]
# Installs Debian's chromium if it is missing.
set -euo pipefail
project=${1:-examples/tpch}
png=${2:-report.png}
bin=${SPILLWAY_BIN:-target/release/spillway}
[ -x "$bin" ] || bin=${CARGO_TARGET_DIR:-target}/release/spillway
html=$("$bin" report "$project")
if ! command -v chromium >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get install -y chromium >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1100,1400 --screenshot="$png" "file://$(realpath "$html")" 2>/dev/null
# A blank page is a few KB; a rendered chart and table are far more.
size=$(stat -c %s "$png")
[ "$size" -gt 30000 ] || { echo "report.png is only $size bytes: the page did not render" >&2; exit 1; }
echo "rendered $html -> $png ($size bytes)"
