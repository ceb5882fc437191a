#!/usr/bin/env bash
# Build a stand-in for the Dockerfile's base image (python:3.11-slim-bookworm) from Debian packages, for machines that
# reach Debian's package archive but not a container registry. The Dockerfile stays as it is: this only puts an image
# with the same tag into the local Docker engine. Needs root, debootstrap and a running Docker engine.
#
#   scripts/make_local_base_image.sh [--force] [TAG]
#
# Like the official image it has python/python3/pip on /usr/local/bin, LANG=C.UTF-8, ca-certificates, Debian's apt
# sources for bookworm (+ updates, security) and empty apt lists; its Python is Debian's 3.11 with venv support.
set -euo pipefail

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
tag="${1:-python:3.11-slim-bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1 && [[ $force -eq 0 ]]; then
    echo "base image $tag already present (use --force to rebuild it)"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "debootstrap is missing: apt-get install -y debootstrap" >&2
    exit 1
fi

rootfs="$(mktemp -d /tmp/dscmr-base-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
cache_dir="${DEBOOTSTRAP_CACHE_DIR:-/var/cache/dscmr-docker/debootstrap}"
mkdir -p "$cache_dir"
log="$rootfs.log"
echo "debootstrap $suite into $rootfs ..."
debootstrap --variant=minbase --cache-dir="$cache_dir" --include=ca-certificates,netbase,tzdata \
    "$suite" "$rootfs" "$mirror" >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
# Python goes in through apt inside the new root: debootstrap's own --include cannot order python3.11-venv's setup.
echo "installing python3.11 and python3.11-venv ..."
chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv' >"$log" 2>&1 \
    || { tail -30 "$log" >&2; exit 1; }
rm -f "$log"

# The official image's layout: python, python3 and pip on /usr/local/bin, no "externally managed" marker.
ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
rm -f "$rootfs/usr/lib/python3.11/EXTERNALLY-MANAGED"
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
# debootstrap leaves the build host's name and resolver here; Docker provides its own at run time.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

python_version="$(chroot "$rootfs" /usr/bin/python3.11 -c 'import platform; print(platform.python_version())')"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$python_version" \
    --change "LABEL org.dscmr.local-base-image=\"debootstrap $suite, Debian python $python_version\"" \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "built local base image $tag (Debian $suite, Python $python_version): $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
