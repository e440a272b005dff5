#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace.
# The end-to-end tests start real containers, so this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup's cargo, also when this runs from a shell that did not read the profile (cron, CI).
for d in "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" /root/.cargo/bin; do [ -x "$d/cargo" ] && PATH="$d:$PATH"; done; export PATH
if [ "$(id -u)" -ne 0 ]; then
  echo "test: the tests start real containers and need root; run: sudo $0" >&2
  exit 1
fi
scripts/setup.sh
scripts/test-tools.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=4 "$@"
# Every bench in its quick mode (the same steps, a few runs, short windows), so a broken bench
# fails the build: about 70 s on 2 cores. The dev profile reuses the build above; a release
# build of everything would add some 14 minutes, and quick figures are not quoted anyway.
SHG_BENCH_QUICK=1 cargo bench -p shg -p vod --profile dev
