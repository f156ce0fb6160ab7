#!/usr/bin/env bash
# Installs the Debian 12 packages pullwatch's build, demo and tests need. Idempotent; needs root.
set -euo pipefail
PACKAGES=(
  protobuf-compiler   # protoc, for tonic-prost-build (and later containerd-client)
  clang libbpf-dev    # the kernel tap's BPF programs (build.rs compiles them with clang)
  containerd runc     # the real container runtime the tests and demo pull through
  docker-registry     # distribution 2.8: the real registry images are pushed to
  skopeo              # pushes test images from OCI layouts
  prometheus          # real Prometheus + promtool for the scrape/PromQL tests and rule tests
  prometheus-alertmanager  # real Alertmanager for the notification test
  python3 python3-pip python3-yaml  # kubernetes-validate (PyPI) and YAML parsing in the deploy tests
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
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
# kubectl (for `kubectl kustomize`): use the one on the machine; Debian's package otherwise.
if ! command -v kubectl >/dev/null; then
  apt-get install -y --no-install-recommends kubernetes-client
fi
# Offline Kubernetes schema validation (PyPI). Debian 12 marks its Python externally managed.
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet kubernetes-validate \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi
# grpcio (PyPI): a Python gRPC CRI caller for the interposer's caller tests.
if ! python3 -c 'import grpc' 2>/dev/null; then
  python3 -m pip install --quiet grpcio \
    || python3 -m pip install --quiet --break-system-packages grpcio
fi
# Debian starts packaged services on install where it can; the tests run their own instances.
for svc in containerd prometheus prometheus-alertmanager docker-registry prometheus-node-exporter; do
  systemctl stop "$svc" 2>/dev/null || true
done
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
