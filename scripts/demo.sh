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
cargo build --release -p shg -p home-automation -p surveillance -p vpn -p arcade
release=target/x86_64-unknown-linux-gnu/release
install -m 0755 "$release/shg" /usr/local/bin/shg
install -m 0755 "$release/shg-runtime" /usr/local/bin/shg-runtime   # creates the containers
# The papers' services the demo hosts, packaged by `shg demo` from these static binaries.
install -d /usr/local/lib/shg/services
for service in automation surveillance vpn arcade; do
  install -m 0755 "$release/$service" "/usr/local/lib/shg/services/$service"
done
echo "demo: installed /usr/local/bin/shg, shg-runtime and the services in /usr/local/lib/shg/services"
exec /usr/local/bin/shg demo --state-dir "${SHG_STATE_DIR:-/var/lib/shg}"
