#!/usr/bin/env bash
# Make a container engine usable on a fresh Debian machine without Docker (CI is root on one):
# install podman (Docker-compatible API for kfp's DockerRunner), buildah, runc and debootstrap
# (for scripts/local_base_images.sh), and, only where the defaults cannot start a container,
# the settings that can:
#   - crun fails under a hybrid cgroup hierarchy ("cgroups in hybrid mode not supported") -> runc
#     with the cgroupfs manager;
#   - the default ulimits fail where setrlimit is not permitted -> no default ulimits.
# A machine with a working Docker engine or podman is left as it is.
set -euo pipefail

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "a Docker engine is reachable: nothing to set up"; exit 0
fi
if ! command -v podman >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "podman is not installed; as root: apt-get install podman buildah runc debootstrap" >&2; exit 2; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman buildah runc debootstrap >/dev/null
fi

conf=/etc/containers/containers.conf
if [ "$(id -u)" = 0 ] && ! grep -qs 'plantid' "$conf"; then
  # Probe: can podman start a container with its defaults? (scratch image from an empty tar)
  probe=localhost/plantid-probe:empty
  podman image inspect "$probe" >/dev/null 2>&1 || tar -c -T /dev/null | podman import - "$probe" >/dev/null
  if ! podman run --rm --network=host -v /bin:/bin:ro -v /lib:/lib:ro -v /lib64:/lib64:ro -v /usr:/usr:ro \
        "$probe" /bin/true >/tmp/plantid-podman-probe.log 2>&1; then
    echo "podman's defaults cannot start a container here ($(tail -1 /tmp/plantid-podman-probe.log));"
    echo "writing $conf: runc, cgroupfs, no default ulimits"
    mkdir -p /etc/containers
    [ -f "$conf" ] && cp "$conf" "$conf.bak"
    cat > "$conf" <<'EOF'
# Written by plantid scripts/setup_podman.sh: crun and the default ulimits fail on this machine.
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
    podman run --rm --network=host -v /bin:/bin:ro -v /lib:/lib:ro -v /lib64:/lib64:ro -v /usr:/usr:ro \
      "$probe" /bin/true || { echo "podman still cannot start a container" >&2; exit 1; }
  fi
fi
podman --version
