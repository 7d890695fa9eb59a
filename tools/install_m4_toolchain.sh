#!/usr/bin/env bash
# Installs what the Cortex-M4 tests need (tests/test_m4.py, tests/test_arduino.py,
# tests/test_export.py): Debian's bare-metal ARM toolchain and QEMU. Does nothing when
# they are installed; needs root and apt-get otherwise (else it says so and the tests
# skip with that reason). `.ci/run` calls it before the test suite.
set -euo pipefail
packages=(gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib
          qemu-system-arm)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "Cortex-M4 toolchain and QEMU: installed"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "Cortex-M4 toolchain: missing ${missing[*]} (needs root and apt-get);" \
       "the Cortex-M4 tests will skip" >&2
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
