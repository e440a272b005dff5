#!/usr/bin/env bash
# Installs the test-only tools that do not come from Debian, under /opt/shg-test. Run as root;
# safe to run again.
# - schemathesis (PyPI), in its own virtual environment: fuzzes the API against its document;
#   tuspy beside it, the household's tus client in the cloud proxy's test.
# - usp-js (npm): a USP controller no one here wrote, driving the gateway's USP agent.
# - qemu-user-static (Debian) and Rust's aarch64 target: the container init is also built for
#   aarch64, a gateway's ARM processor, and run under the emulator (crates/runtime/tests/it/init.rs).
set -euo pipefail

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

venv=/opt/shg-test/venv
version=4.32.5
tuspy=1.1.0
# The tools' answers are matched whole, with no pipe: `grep -q` stops reading at its match,
# and under pipefail the writer it left behind (pip, killed by SIGPIPE) failed the check, so
# every run reinstalled both.
if ! [[ -x "$venv/bin/schemathesis" \
        && $("$venv/bin/schemathesis" --version 2>/dev/null) == *"$version"* \
        && $'\n'$("$venv/bin/pip" show tuspy 2>/dev/null)$'\n' == *$'\n'"Version: $tuspy"$'\n'* ]]; then
  if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
    apt_install python3-venv
  fi
  echo "test-tools: installing schemathesis $version and tuspy $tuspy into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version" "tuspy==$tuspy"
fi

node=/opt/shg-test/node
usp_js=0.5.1
if ! grep -qs "\"version\": \"$usp_js\"" "$node/node_modules/usp-js/package.json"; then
  # Debian's nodejs and npm, unless a node with its npm is there already.
  command -v npm >/dev/null || apt_install nodejs npm
  echo "test-tools: installing usp-js $usp_js into $node"
  mkdir -p "$node"
  npm install --silent --no-audit --no-fund --prefix "$node" "usp-js@$usp_js" >/dev/null
fi

if ! command -v qemu-aarch64-static >/dev/null; then
  echo "test-tools: installing qemu-user-static"
  apt_install qemu-user-static
fi
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  echo "test-tools: adding Rust's aarch64-unknown-linux-gnu target"
  rustup target add aarch64-unknown-linux-gnu
fi
