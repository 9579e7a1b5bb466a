#!/usr/bin/env bash
# Renders a run report (runs/<run>/report.html) in headless Chromium to a PNG, so that the
# README shows the report as a real browser draws it.
#
#   infra/screenshot-report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
#
# WIDTH x HEIGHT is the browser window (default 1100 x 2600): the PNG is that much of the
# page from its top. Installs Debian's `chromium` package with apt-get when it is missing
# (root or sudo). The report needs no network: Chromium is run with networking refused.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
  exit 2
fi
report=$1
out=$2
width=${3:-1100}
height=${4:-2600}
[ -f "$report" ] || { echo "no report at $report" >&2; exit 1; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium is not installed: installing Debian's chromium package" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

abs_report=$(realpath "$report")
mkdir -p "$(dirname "$out")"
abs_out=$(realpath -m "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

# --proxy-server to a closed port: any request to the network fails, so the PNG shows what
# the self-contained file alone draws.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --no-first-run --disable-extensions \
  --proxy-server=127.0.0.1:9 --proxy-bypass-list='<-loopback>' \
  --window-size="$width,$height" --virtual-time-budget=5000 \
  --screenshot="$abs_out" "file://$abs_report" 2> "$profile/chromium.log" || {
    cat "$profile/chromium.log" >&2
    exit 1
  }
[ -s "$abs_out" ] || { echo "chromium wrote no screenshot" >&2; cat "$profile/chromium.log" >&2; exit 1; }
echo "$abs_out ($(stat -c %s "$abs_out") bytes, ${width}x${height})"
