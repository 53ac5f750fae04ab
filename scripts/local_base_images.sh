#!/usr/bin/env bash
# Stand-ins for the Dockerfiles' base images, built from Debian's own packages, for a machine
# that cannot reach the registry holding python:3.11-slim-bookworm / node:20-bookworm-slim
# (an air-gapped site uses its own mirror instead: PYTHON_BASE=... NODE_BASE=... make images).
#
#   scripts/local_base_images.sh [ENGINE]      # ENGINE: podman (default) or docker
#
# python: debootstrap --variant=minbase bookworm + python3 (3.11), python3-venv, python-is-python3
#         -> localhost/plantid-base-python:3.11-bookworm
# node:   that + this machine's node (v20) binary and npm -> localhost/plantid-base-node:20-bookworm
# Nothing of this machine's TLS set-up is baked in: build_images.sh passes extra CA certificates
# to the build steps that need them as a build secret.
set -euo pipefail
ENGINE="${1:-${ENGINE:-podman}}"
PYTHON_REF=localhost/plantid-base-python:3.11-bookworm
NODE_REF=localhost/plantid-base-node:20-bookworm

have() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this machine's apt uses (deb822 or one-line sources).
mirror() {
  local uri
  uri="$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')"
  [ -n "$uri" ] || uri="$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')"
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! have "$PYTHON_REF"; then
  command -v debootstrap >/dev/null || { echo "debootstrap is needed to build $PYTHON_REF (apt-get install debootstrap)" >&2; exit 2; }
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root to build $PYTHON_REF" >&2; exit 2; }
  rootfs="$(mktemp -d /tmp/plantid-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap bookworm (minbase + python3) from $(mirror) ..."
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$(mirror)" >/tmp/plantid-debootstrap.log 2>&1 \
    || { tail -20 /tmp/plantid-debootstrap.log >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$ENGINE" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$PYTHON_REF"
  rm -rf "$rootfs"; trap - EXIT
fi
echo "python base: $PYTHON_REF"

if ! have "$NODE_REF"; then
  node_bin="$(command -v node || true)"
  [ -n "$node_bin" ] || { echo "node (v20) is needed on this machine to build $NODE_REF" >&2; exit 2; }
  node_bin="$(readlink -f "$node_bin")"
  npm_dir="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
  ctx="$(mktemp -d /tmp/plantid-node-base.XXXXXX)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$node_bin" "$ctx/node"
  cp -r "$npm_dir" "$ctx/npm"
  cat > "$ctx/Containerfile" <<EOF
FROM $PYTHON_REF
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && node --version && npm --version
EOF
  net=(); [ "$ENGINE" = podman ] && net=(--network=host)
  "$ENGINE" build "${net[@]}" -f "$ctx/Containerfile" -t "$NODE_REF" "$ctx"
  rm -rf "$ctx"; trap - EXIT
fi
echo "node base: $NODE_REF"
