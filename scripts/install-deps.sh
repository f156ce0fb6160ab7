#!/usr/bin/env bash
# Installs what pullwatch's build, demo and tests need on Debian 12. Idempotent; needs root for
# the packages. What it touches, and nothing else:
#   - the Debian packages below that are missing (apt-get install; services they ship are NOT
#     started: a temporary /usr/sbin/policy-rc.d refuses that during the install only, unless the
#     host has its own, which is left as it is). No service is ever stopped, restarted or disabled:
#     the tests and the demo run their own containerd, registries and Prometheus on their own
#     sockets and ports.
#   - kubectl from Debian's kubernetes-client, when none is on PATH.
#   - a Python virtual environment in .venv/ of this checkout (system site packages visible) with
#     kubernetes-validate and grpcio from PyPI; nothing is installed into the system's Python.
# PULLWATCH_POLICY_RC_D and PULLWATCH_VENV move the last two (tests/e2e/setup.rs uses them).
set -euo pipefail
cd "$(dirname "$0")/.."
POLICY="${PULLWATCH_POLICY_RC_D:-/usr/sbin/policy-rc.d}"
VENV="${PULLWATCH_VENV:-$PWD/.venv}"
PACKAGES=(
  protobuf-compiler   # protoc, for tonic-prost-build (and later containerd-client)
  clang libbpf-dev    # the kernel tap's BPF programs (build.rs compiles them with clang)
  containerd runc     # the real container runtime the tests and demo pull through
  docker-registry     # distribution 2.8: the real registry images are pushed to
  skopeo              # pushes test images from OCI layouts
  prometheus          # real Prometheus + promtool for the scrape/PromQL tests and rule tests
  prometheus-alertmanager  # real Alertmanager for the notification test
  python3 python3-venv python3-yaml  # a venv for kubernetes-validate and grpcio (PyPI); YAML in the deploy tests
  systemd             # systemd-analyze verify for the interposer unit
  util-linux iproute2 procps ca-certificates curl  # setpriv, prlimit: pullwatch under limits
  openssl             # certificates for the --web.config.file TLS test
  g++                 # libFuzzer's C++ sources (scripts/fuzz.sh builds them via libfuzzer-sys)
  golang-go golang-google-grpc-dev  # a grpc-go CRI caller for the interposer's caller tests
  socat               # the byte-relay floor in the interposer benchmark
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v kubectl >/dev/null || missing+=(kubernetes-client)  # for `kubectl kustomize`
# Installs packages without starting the services they ship: Debian starts them where it can,
# and a host's own containerd or Prometheus must not get company on its ports.
install_packages() {
  local created=
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# pullwatch install-deps: no service starts during this install\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    created=1
    trap 'rm -f "$POLICY"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "$@"
  if [ -n "$created" ]; then
    rm -f "$POLICY"
    trap - EXIT
  fi
}
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  install_packages "${missing[@]}"
fi
# kubernetes-validate (offline Kubernetes schema validation) and grpcio (a Python gRPC CRI
# caller) from PyPI, in a venv: Debian 12 marks its Python externally managed.
if [ ! -x "$VENV/bin/python3" ]; then
  python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python3" -c 'import grpc, kubernetes_validate' 2>/dev/null; then
  "$VENV/bin/python3" -m pip install --quiet kubernetes-validate grpcio
fi
# The minimum Rust version: Cargo.toml's rust-version (tests/docs.rs keeps the README and this in step).
RUST_MIN=1.91
if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install the Rust toolchain (rustup, Rust >= $RUST_MIN) first" >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$RUST_MIN" "$have" | sort -V | head -1)" != "$RUST_MIN" ]; then
  echo "install-deps: Rust $have is older than $RUST_MIN; run rustup update" >&2
  exit 1
fi
