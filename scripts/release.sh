#!/usr/bin/env bash
# Builds pullwatch's image for linux/amd64 and linux/arm64 from this checkout and pushes it:
#
#   scripts/release.sh VERSION              e.g. 0.1.0; must be Cargo.toml's version
#   scripts/release.sh VERSION --dry-run    prints what it would run, runs nothing
#
# The image goes to $PULLWATCH_IMAGE (default: the repository the shipped DaemonSet names, so a
# release and deploy/kubernetes/base agree), tagged VERSION. Needs docker with buildx and a
# login to that registry; .github/workflows/release.yml runs it for a pushed tag vVERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: scripts/release.sh VERSION [--dry-run]" >&2; exit 64; }
[ $# -ge 1 ] || usage
VERSION=$1
DRY_RUN=
case "${2:-}" in
  "") ;;
  --dry-run) DRY_RUN=1 ;;
  *) usage ;;
esac
[ $# -le 2 ] || usage
crate=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
if [ "$VERSION" != "$crate" ]; then
  echo "release: VERSION $VERSION is not Cargo.toml's version $crate" >&2
  exit 64
fi
# The image the DaemonSet runs: REPOSITORY:VERSION.
shipped=$(sed -n 's/^ *image: \(.*\)$/\1/p' deploy/kubernetes/base/daemonset.yaml | head -1)
IMAGE=${PULLWATCH_IMAGE:-${shipped%:*}}
if [ -z "${PULLWATCH_IMAGE:-}" ] && [ "$shipped" != "$IMAGE:$VERSION" ]; then
  echo "release: the DaemonSet runs $shipped, not $IMAGE:$VERSION; update deploy/kubernetes/base/daemonset.yaml" >&2
  exit 1
fi
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
cmd=(docker buildx build --platform linux/amd64,linux/arm64
  --build-arg "PULLWATCH_REVISION=$revision"
  --tag "$IMAGE:$VERSION" --push .)
if [ -n "$DRY_RUN" ]; then
  echo "${cmd[*]}"
  exit 0
fi
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  echo "release: the checkout has uncommitted changes; release from a clean tag" >&2
  exit 1
fi
"${cmd[@]}"
