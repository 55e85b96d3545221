#!/usr/bin/env bash
# Build a local base image (Debian bookworm + python3 3.11 + venv) without any
# container registry: debootstrap a minimal rootfs from a Debian package mirror
# and `docker import` it.
#
#   sudo deploy/build-base.sh            # -> image pybroker-base:bookworm
#
# Environment:
#   BASE_TAG     image to create            (default pybroker-base:bookworm)
#   ROOTFS       scratch dir for the rootfs (default /var/tmp/pybroker-rootfs; removed afterwards)
#   MIRROR       Debian mirror URL          (default: the mirror apt on this machine uses,
#                                            else http://deb.debian.org/debian)
#   SUITE        Debian suite               (default bookworm)
#   KEEP_ROOTFS  1 = keep the rootfs dir after import
#   EXTRA_CA_DIR directory of extra *.crt CA certificates to trust inside the base
#                (default /usr/local/share/ca-certificates: the CAs this host added, e.g. a
#                TLS-intercepting egress proxy in front of PyPI; set EXTRA_CA_DIR= to skip)
set -euo pipefail

BASE_TAG=${BASE_TAG:-pybroker-base:bookworm}
ROOTFS=${ROOTFS:-/var/tmp/pybroker-rootfs}
SUITE=${SUITE:-bookworm}

log() { printf '[build-base] %s\n' "$*" >&2; }

detect_mirror() {
    # deb822 "URIs:" lines and one-line "deb URL suite ..." entries; skip security/updates-only
    # and third-party repositories: we want the main Debian archive.
    local f url
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        while read -r url; do
            case "$url" in
                *debian-security*|*security.debian.org*) continue ;;
                */debian|*/debian/) printf '%s\n' "${url%/}"; return 0 ;;
            esac
        done < <(sed -n -e 's/^[[:space:]]*URIs:[[:space:]]*//p' \
                        -e 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' "$f" \
                 | tr ' ' '\n' | sed '/^$/d')
    done
    return 1
}

if [ "$(id -u)" -ne 0 ]; then
    log "debootstrap needs root; re-run with sudo"
    exit 1
fi
command -v docker >/dev/null || { log "docker not found"; exit 1; }

MIRROR=${MIRROR:-$(detect_mirror || echo http://deb.debian.org/debian)}
log "suite=$SUITE mirror=$MIRROR rootfs=$ROOTFS image=$BASE_TAG"

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

case "$ROOTFS" in
    /|/usr|/var|/tmp|/var/tmp|"") log "refusing ROOTFS=$ROOTFS"; exit 1 ;;
esac
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"
cleanup() {
    # debootstrap may leave /proc or /sys mounted in the chroot on failure
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    if [ "${KEEP_ROOTFS:-0}" != 1 ]; then rm -rf "$ROOTFS"; fi
}
trap cleanup EXIT

# python3 is 3.11 on bookworm; python3-venv brings ensurepip (pip/setuptools wheels),
# ca-certificates lets pip reach PyPI over TLS during the image build.
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"

# Trust the same locally added CAs as this host, so pip inside `docker build` can reach
# PyPI through the same (possibly TLS-intercepting) egress as the host.
EXTRA_CA_DIR=${EXTRA_CA_DIR-/usr/local/share/ca-certificates}
if [ -n "$EXTRA_CA_DIR" ] && compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
    log "adding extra CA certificates from $EXTRA_CA_DIR: $(cd "$EXTRA_CA_DIR" && echo *.crt)"
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp "$EXTRA_CA_DIR"/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates
fi

chroot "$ROOTFS" python3 -c 'import sys, venv, ensurepip, ssl; assert sys.version_info[:2] >= (3, 11), sys.version; print("python", sys.version.split()[0])'

# Slim the rootfs: package caches and lists, docs, man pages, non-English locales.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
# Point apt at the same mirror so `apt-get update` works inside images built on this base.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOTFS/etc/apt/sources.list"

log "importing into docker as $BASE_TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$BASE_TAG"
docker run --rm "$BASE_TAG" python3 --version
log "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE_TAG")"
