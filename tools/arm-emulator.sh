#!/usr/bin/env bash
# Set up an aarch64 user-mode emulator on an x86_64 Debian 12 machine, to run the aarch64
# libraries lego-tvm builds (tests, and an RPC server that `lego-tvm tune/bench --rpc` drive).
# No binfmt_misc registration, no chroot:
#   - qemu-user (Debian, --no-install-recommends keeps qemu-user-binfmt out) and the Debian
#     cross toolchain (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross) that export uses;
#   - an arm64 CPython 3.11 sysroot unpacked from Debian .debs with `dpkg -x` (private apt state);
#   - the aarch64 apache-tvm wheel and its runtime dependencies in a plain folder (PYTHONPATH);
#   - a wrapper, $ROOT/bin/python-aarch64, that runs that CPython under qemu-aarch64.
#
#   bash tools/arm-emulator.sh [setup|path|smoke]
#     setup : everything above (idempotent: each step leaves a stamp and is skipped next time)
#     path  : print the wrapper's path (after setup)
#     smoke : run `import tvm` in the emulator and print the machine it reports
#
# Environment: LEGO_ARM_EMU (default ~/.cache/lego-tvm/arm-emu) where it all lives;
# QEMU_CPU (default cortex-a72) the emulated CPU, a plain ARMv8.0-A + NEON core, so an
# instruction a Cortex-A72 lacks (SVE, dotprod, fp16 arithmetic) stops the program with SIGILL.
set -euo pipefail

ROOT=${LEGO_ARM_EMU:-$HOME/.cache/lego-tvm/arm-emu}
PYVER=3.11                 # Debian 12's python3; the aarch64 wheels below are cp311
PYTHON=${PYTHON:-python3}  # host python with pip, used only to download wheels
# Keep in step with pyproject.toml; the rest is what `import tvm` and its RPC server need.
WHEELS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 ml_dtypes==0.6.0
        typing_extensions==4.16.0 tornado==6.6.1 psutil==7.2.2 cloudpickle==3.1.3"
ARM_DEBS="python${PYVER}-minimal libpython${PYVER}-stdlib libstdc++6"   # + dependency closure
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
_apt_uri() { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
             | grep -E "$1" | head -n1; }
MIRROR=${ARM_EMU_DEBIAN_MIRROR:-$(_apt_uri '/debian$')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${ARM_EMU_SECURITY_MIRROR:-$(_apt_uri '/debian-security$')}
SECMIRROR=${SECMIRROR:-http://deb.debian.org/debian-security}
APT_PRIVATE=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
  -o Dir::State="$ROOT/apt" -o Dir::State::Lists="$ROOT/apt/lists"
  -o Dir::State::status="$ROOT/apt/status" -o Dir::Cache="$ROOT/apt/cache"
  -o Dir::Etc::SourceList="$ROOT/apt/sources.list" -o Dir::Etc::SourceParts="$ROOT/apt/sources.list.d"
  -o Dir::Etc::Preferences="$ROOT/apt/preferences" -o Dir::Etc::PreferencesParts="$ROOT/apt/preferences.d"
  -o Debug::NoLocking=1)
log() { printf '[arm-emulator %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
done_before() { [ -e "$ROOT/.stamp_$1" ]; }
mark_done() { touch "$ROOT/.stamp_$1"; }

host_packages() {
  if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null \
     && dpkg -s libc6-dev-arm64-cross >/dev/null 2>&1; then return; fi
  local packages="qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
  if [ "$(id -u)" != 0 ]; then
    echo "arm-emulator: needs root once for: apt-get install --no-install-recommends $packages" >&2
    exit 1
  fi
  log "apt-get install $packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
}

arm64_sysroot() {
  done_before sysroot && return
  log "arm64 CPython sysroot from Debian $CODENAME .debs"
  rm -rf "$ROOT/apt" "$ROOT/sysroot"
  mkdir -p "$ROOT"/apt/{lists/partial,cache/archives/partial,sources.list.d,preferences.d} "$ROOT/sysroot"
  : > "$ROOT/apt/status"   # empty dpkg status: apt resolves the whole dependency closure
  local keyring="signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"
  cat > "$ROOT/apt/sources.list" <<SOURCES
deb [arch=arm64 $keyring] $MIRROR $CODENAME main
deb [arch=arm64 $keyring] $MIRROR $CODENAME-updates main
deb [arch=arm64 $keyring] $SECMIRROR $CODENAME-security main
SOURCES
  apt-get "${APT_PRIVATE[@]}" -qq update
  apt-get "${APT_PRIVATE[@]}" -y -qq -d --no-install-recommends install $ARM_DEBS >/dev/null
  for deb in "$ROOT"/apt/cache/archives/*.deb; do dpkg -x "$deb" "$ROOT/sysroot"; done
  # qemu -L falls back to the host's file when the sysroot lacks one: these folders must
  # exist so the host's x86 site-packages never leak into the emulated interpreter.
  mkdir -p "$ROOT/sysroot/usr/lib/python3/dist-packages" \
           "$ROOT/sysroot/usr/local/lib/python${PYVER}/dist-packages"
  mark_done sysroot
}

arm64_wheels() {
  done_before wheels && return
  log "aarch64 wheels: $(echo $WHEELS)"
  rm -rf "$ROOT/wheels" "$ROOT/site"
  local platform=(--only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
                  --platform manylinux2014_aarch64 --python-version "$PYVER" --implementation cp)
  "$PYTHON" -m pip download --disable-pip-version-check -q -d "$ROOT/wheels" "${platform[@]}" --no-deps $WHEELS
  "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -q --no-index --no-deps --target "$ROOT/site" \
    "${platform[@]}" "$ROOT"/wheels/*.whl
  mark_done wheels
}

wrapper() {
  mkdir -p "$ROOT/bin"
  cat > "$ROOT/bin/python-aarch64" <<WRAPPER
#!/bin/sh
# aarch64 CPython under qemu-user. "-0" sets the guest's argv[0] to this wrapper, so whatever
# re-executes sys.executable (TVM's RPC server workers, subprocess) runs emulated too.
export PYTHONPATH="$ROOT/site\${PYTHONPATH:+:\$PYTHONPATH}"
exec qemu-aarch64 -cpu "\${QEMU_CPU:-cortex-a72}" -L "$ROOT/sysroot" -0 "$ROOT/bin/python-aarch64" \
  "$ROOT/sysroot/usr/bin/python$PYVER" "\$@"
WRAPPER
  chmod +x "$ROOT/bin/python-aarch64"
}

setup() {
  local start=$SECONDS
  mkdir -p "$ROOT"
  host_packages; arm64_sysroot; arm64_wheels; wrapper
  log "ready in $((SECONDS - start)) s: $ROOT/bin/python-aarch64"
}

case "${1:-setup}" in
  setup) setup ;;
  path) echo "$ROOT/bin/python-aarch64" ;;
  smoke) setup
         TVM_USE_RUNTIME_LIB=1 "$ROOT/bin/python-aarch64" -c \
           'import platform, tvm; print("emulated", platform.machine(), "tvm", tvm.__version__)' ;;
  *) echo "usage: $0 [setup|path|smoke]" >&2; exit 2 ;;
esac
