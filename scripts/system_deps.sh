#!/usr/bin/env bash
# Installs the system packages the tests and benchmarks use and pip cannot: dig (dnsutils), nginx, Chromium and
# its driver (the dashboard's browser test), curl; etcd and nsd for the side-by-side benchmarks only. Idempotent: only what is missing is
# installed, so a machine that has them all runs no apt-get at all. Not root, or no apt-get: says what is missing
# and exits 0 (tests that need a missing binary skip with the reason, or fail under CI=true).
set -uo pipefail
declare -A want=(
  [dig]=dnsutils [nginx]=nginx [chromium]=chromium [chromedriver]=chromium-driver [etcd]=etcd-server [curl]=curl [nsd]=nsd
)
missing=()
for bin in "${!want[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing+=("${want[$bin]}")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: missing ${missing[*]} (install them as root with apt-get); tests needing them will skip" >&2
  exit 0
fi
echo "system_deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
  echo "system_deps: apt-get install ${missing[*]} failed; tests needing them will skip (or fail under CI=true)" >&2
# nginx's and nsd's packages may start system instances (:80, :53); tests and benchmarks run their own.
for unit in nginx nsd; do
  if systemctl is-active "$unit" >/dev/null 2>&1; then systemctl stop "$unit" >/dev/null 2>&1 || true; fi
done
exit 0
