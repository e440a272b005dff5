#!/usr/bin/env bash
# The main job: a gateway hosting the sample services, on embedded defaults.
# Builds shg, then runs `shg demo` (state in /var/lib/shg unless SHG_STATE_DIR is set).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the gateway runs containers and needs root; run: sudo $0" >&2
  exit 1
fi
scripts/setup.sh
cargo build --release -p shg
install -m 0755 target/x86_64-unknown-linux-gnu/release/shg /usr/local/bin/shg
echo "demo: installed /usr/local/bin/shg"
exec /usr/local/bin/shg demo --state-dir "${SHG_STATE_DIR:-/var/lib/shg}"
