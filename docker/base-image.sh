#!/usr/bin/env bash
# The CPU image's base where Docker Hub is closed: Debian bookworm with its Python 3.11
# (python3, venv, the shared libpython the Triton stub links), made with debootstrap
# from Debian's mirror and imported into Docker; about a minute, once per machine.
#
#   docker/base-image.sh   uses python:3.11-slim-bookworm when it is here or can be
#                          pulled; otherwise builds resnet-triton/python:3.11-bookworm
#                          and names it in docker-compose.override.yml (gitignored),
#                          which `docker compose` reads beside docker-compose.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
public=python:3.11-slim-bookworm
local_base=resnet-triton/python:3.11-bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
override=docker-compose.override.yml

if docker image inspect "$public" >/dev/null 2>&1 || docker pull -q "$public" >/dev/null 2>&1; then
    echo "base image: $public"
    if [ -f "$override" ] && grep -q "BASE_IMAGE: $local_base" "$override"; then
        rm "$override"
    fi
    exit 0
fi

if docker image inspect "$local_base" >/dev/null 2>&1; then
    echo "base image: $local_base (built earlier on this machine; $public cannot be pulled)"
else
    echo "$public cannot be pulled here: building $local_base with debootstrap"
    command -v debootstrap >/dev/null || { echo "error: debootstrap not found: run make docker-tools" >&2; exit 1; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
        bookworm "$rootfs" "$mirror" >/dev/null
    cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
    # As Debian's slim images: no documentation but the licences.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<EXCLUDES
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EXCLUDES
    chroot "$rootfs" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get upgrade -y -qq >/dev/null
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{man,info,locale}/*
    find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "debootstrap bookworm from $mirror: a local stand-in for $public" \
        - "$local_base" >/dev/null
    echo "built $local_base ($(docker image inspect -f '{{.Size}}' "$local_base" | awk '{printf "%.0f MB", $1/1e6}'))"
fi
cat >"$override" <<YAML
# Written by docker/base-image.sh: $public cannot be pulled on this machine, so the
# CPU image builds on a local equivalent. Per machine, gitignored; delete to undo.
services:
  tritonserver:
    build:
      args:
        BASE_IMAGE: $local_base
YAML
echo "wrote $override (BASE_IMAGE: $local_base)"
