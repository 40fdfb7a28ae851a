#!/usr/bin/env bash
# The service image's base where no image registry can be reached (`make image LOCAL_BASE=1`): Debian 12 from its
# mirror (mmdebstrap) with python3 (3.11) and its venv module, tini and the CA certificates this machine trusts (a
# local egress CA included, so pip inside the build reaches PyPI as the host does), imported as an image. It is tagged
# with a hash of this script and those certificates and reused while they hold: one build per machine, not per image.
#   deploy/base.sh podman|docker      prints the base's tag (progress on stderr)
set -euo pipefail
CLI=${1:-podman}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,tini,ca-certificates
shopt -s nullglob
CAS=(/usr/local/share/ca-certificates/*.crt)
TAG=localhost/korasr-base:$SUITE-$(cat "$0" "${CAS[@]}" | sha256sum | cut -c1-12)
if "$CLI" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base $TAG (built before)" >&2
  echo "$TAG"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "a local base needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 2; }
work=$(mktemp -d /tmp/korasr-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "building the base $TAG from $MIRROR ($SUITE: $PACKAGES)" >&2
hooks=()
for ca in "${CAS[@]}"; do hooks+=(--customize-hook="copy-in $ca /usr/local/share/ca-certificates/"); done
# no documentation, manuals or translations; apt's lists not kept
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  "${hooks[@]}" --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$SUITE" "$work/rootfs.tar" "$MIRROR" >&2
# pip trusts the system's certificates (its own bundle lacks a local CA)
"$CLI" import --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python3"]' \
  "$work/rootfs.tar" "$TAG" >/dev/null
echo "$TAG"
