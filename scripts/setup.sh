#!/usr/bin/env bash
# Installs what building, running and testing SHG needs on Debian 12, when it is missing.
# Run as root. Safe to run again: it installs only what is absent.
set -euo pipefail

packages=(
  pkg-config        # finds libseccomp for the build
  libseccomp-dev    # compiles the seccomp filter at build time (runtime/build.rs)
  busybox-static    # root filesystem of the sample services and of the tests
  runc              # the bundle must run unchanged under runc (a test proves it)
  e2fsprogs         # mkfs.ext4 for each service's size-capped data volume
  mount             # mount -o loop for those volumes
  prometheus        # a test scrapes /metrics with a real Prometheus and checks it with promtool
  iproute2          # ip, tc and bridge: veths, the bridge, HTB shaping of every service
  nftables          # nft: the services' firewall, NAT and published ports
  util-linux        # nsenter: the network tests run an agent in a namespace of its own
  iperf3            # the network bench's traffic
  curl              # the network tests' LAN and WAN hosts
  chromium          # the web console's tests run it headless…
  chromium-driver   # …driven over WebDriver
  docker-registry   # a real OCI registry on loopback: installs by reference, pulls on the gateway
  skopeo            # pushes packages into it
  umoci             # builds a plain OCI image the way other tools do
  buildah           # builds a standard image from a FROM scratch Containerfile (vfs storage)
  postgresql        # the fleet controller's tests run on a throwaway PostgreSQL cluster too
  mosquitto         # the MQTT broker between the USP agent and a USP controller in its tests
  mosquitto-clients # mosquitto_pub/sub: the USP tests send it malformed records; devices on a LAN
  ffmpeg            # a camera's frames for the surveillance service's test
  aria2             # aria2c: a standard BitTorrent client fetches a title from the vod swarm
  wireguard-go      # a real WireGuard peer (userspace: this kernel has no module) for the VPN's tests
  wireguard-tools   # wg: its keys and its configuration
  python3           # the VPN test's LAN sink and its garbage datagrams
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing; install Rust (rustup)" >&2; exit 1; }
