#!/usr/bin/env bash
# Build berth's local images with no image registry:
#
#   berth-python-base:local  Debian bookworm + Python 3.11, made with debootstrap (~35 s, once)
#   berth-echo:local         the echo agent (docker/agent.Dockerfile)
#   berth:local              berth itself (docker/berth.Dockerfile)
#
# The project and all its dependencies are built into wheels on the host
# (build/wheels/{deps,project}, from PyPI), so the image builds need no network. An image is rebuilt
# only when the sources it is made of changed (label berth.source-hash).
#
#   scripts/build-images.sh            # all three
#   scripts/build-images.sh echo       # base + berth-echo:local only
#   BERTH_REBUILD=1 scripts/build-images.sh
#   BERTH_ECHO_IMAGE=berth-echo:mine scripts/build-images.sh echo   # another tag (a second
#                                      # work tree's tests, leaving berth-echo:local alone)
#
# Uses $DOCKER_HOST, or starts the local engine with scripts/docker-engine.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHAT="${1:-all}"
BASE_IMAGE="${BERTH_BASE_IMAGE:-berth-python-base:local}"
ECHO_IMAGE="${BERTH_ECHO_IMAGE:-berth-echo:local}"
WHEELS="$ROOT/build/wheels"
PIP="${BERTH_PIP:-$ROOT/.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
# docker.io's engine has BuildKit, but a newer docker CLI without the buildx plugin refuses
# to use it; the classic builder does all these Dockerfiles need.
export DOCKER_BUILDKIT=0

say() { echo "build-images: $*" >&2; }

if [ -z "${DOCKER_HOST:-}" ] && ! docker version >/dev/null 2>&1; then
  eval "$("$ROOT/scripts/docker-engine.sh" start)"
  export DOCKER_HOST
fi

image_label() {  # image label -> value ("" when the image or the label is missing)
  docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

debian_mirror() {
  if [ -n "${BERTH_DEBIAN_MIRROR:-}" ]; then echo "$BERTH_DEBIAN_MIRROR"; return; fi
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

build_base() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    say "building $BASE_IMAGE needs root (debootstrap); or load one: docker load < base.tar"
    return 1
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap…"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
  fi
  local rootfs mirror t0=$SECONDS
  mirror="$(debian_mirror)"
  rootfs="$(mktemp -d "${BERTH_BUILD_TMP:-/var/tmp}/berth-rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' RETURN
  say "debootstrap bookworm from $mirror (about 35 s)…"
  # python3-venv: `python3 -m venv` with pip (Debian's python3 has no ensurepip without it).
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; return 1; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["python3"]' -c 'ENV LANG=C.UTF-8' \
    -m "debootstrap --variant=minbase --include=python3,python3-venv bookworm" - "$BASE_IMAGE" >/dev/null
  say "$BASE_IMAGE built in $((SECONDS - t0)) s"
}

source_hash() {
  # What the wheels and the images are made of: the project's sources and the Dockerfiles.
  (
    cd "$ROOT"
    {
      find pyproject.toml README.md src docker -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' 2>/dev/null | LC_ALL=C sort \
        | xargs sha256sum
      docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
    } | sha256sum | cut -c1-16
  )
}

build_wheels() {
  # deps/: every dependency of berth[all], rebuilt only when pyproject.toml changes;
  # project/: berth's own wheel, rebuilt when any source changes.
  local hash="$1" deps_hash t0=$SECONDS
  deps_hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  mkdir -p "$WHEELS"
  if [ ! -f "$WHEELS/deps/.hash" ] || [ "$(cat "$WHEELS/deps/.hash")" != "$deps_hash" ]; then
    say "building wheels of berth[all]'s dependencies into build/wheels/deps…"
    local new="$WHEELS/deps.new"
    rm -rf "$new"
    mkdir -p "$new"
    # Binary wheels for the image's Python (CPython 3.11, glibc 2.36). The host's Python may
    # be a newer 3.11.x than Debian's 3.11.2: add what is only needed below 3.11.3
    # (environment markers), or pip in the image finds it missing.
    if ! $PIP wheel -q --disable-pip-version-check -w "$new" "$ROOT[all]" "async-timeout>=4.0.3" \
         >"$new.log" 2>&1; then
      grep -v "^WARNING: Location" "$new.log" | tail -n 40 >&2
      rm -rf "$new" "$new.log"
      return 1
    fi
    rm -f "$new.log" "$new"/berth-*.whl
    rm -rf "$WHEELS/deps"
    mv "$new" "$WHEELS/deps"
    echo "$deps_hash" >"$WHEELS/deps/.hash"
  fi
  if [ ! -f "$WHEELS/project/.hash" ] || [ "$(cat "$WHEELS/project/.hash")" != "$hash" ]; then
    rm -rf "$WHEELS/project"
    mkdir -p "$WHEELS/project"
    if ! $PIP wheel -q --disable-pip-version-check --no-deps -w "$WHEELS/project" "$ROOT" \
         >"$WHEELS/project.log" 2>&1; then
      tail -n 40 "$WHEELS/project.log" >&2
      return 1
    fi
    rm -f "$WHEELS/project.log"
    echo "$hash" >"$WHEELS/project/.hash"
  fi
  say "wheels ready in $((SECONDS - t0)) s"
}

build_image() {  # dockerfile tag hash
  local file="$1" tag="$2" hash="$3"
  if [ "${BERTH_REBUILD:-0}" != 1 ] && [ "$(image_label "$tag" berth.source-hash)" = "$hash" ]; then
    say "$tag is up to date"
    return 0
  fi
  local t0=$SECONDS
  say "building $tag…"
  local out
  if ! out="$(docker build -f "$ROOT/$file" --build-arg "BASE=$BASE_IMAGE" \
               --label "berth.source-hash=$hash" -t "$tag" "$WHEELS" 2>&1)"; then
    echo "$out" | tail -n 40 >&2
    say "building $tag failed"
    return 1
  fi
  BUILT=1
  say "$tag built in $((SECONDS - t0)) s"
}

build_base
HASH="$(source_hash)"
BUILT=0
# What a rebuild replaces: the images the tags pointed to. (The untagged `deps` build
# stage stays: it is the cache of the dependency layers.)
OLD_IMAGES="$(docker images -q --no-trunc "$ECHO_IMAGE"; docker images -q --no-trunc berth:local)"
need=0
case "$WHAT" in
  all) [ "$(image_label "$ECHO_IMAGE" berth.source-hash)" = "$HASH" ] \
         && [ "$(image_label berth:local berth.source-hash)" = "$HASH" ] || need=1 ;;
  echo) [ "$(image_label "$ECHO_IMAGE" berth.source-hash)" = "$HASH" ] || need=1 ;;
  berth) [ "$(image_label berth:local berth.source-hash)" = "$HASH" ] || need=1 ;;
  *) say "usage: $0 [all|echo|berth]"; exit 2 ;;
esac
if [ "$need" = 1 ] || [ "${BERTH_REBUILD:-0}" = 1 ]; then
  build_wheels "$HASH"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = echo ]; then
  build_image docker/agent.Dockerfile "$ECHO_IMAGE" "$HASH"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = berth ]; then
  build_image docker/berth.Dockerfile berth:local "$HASH"
fi
if [ "$BUILT" = 1 ]; then
  current="$(docker images -q --no-trunc "$ECHO_IMAGE"; docker images -q --no-trunc berth:local)"
  for id in $OLD_IMAGES; do
    grep -qx "$id" <<<"$current" || docker rmi "$id" >/dev/null 2>&1 || true
  done
fi
