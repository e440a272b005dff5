#!/usr/bin/env bash
# Installs the test-only tools that do not come from Debian: schemathesis (PyPI), in its own
# virtual environment under /opt/shg-test. Run as root; safe to run again.
set -euo pipefail
venv=/opt/shg-test/venv
version=4.32.5
if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  exit 0
fi
if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
echo "test-tools: installing schemathesis $version into $venv"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
