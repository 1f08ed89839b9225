#!/usr/bin/env bash
# A local Docker engine for berth's docker runtime and its tests (see docs and
# /work/shared/recipes/docker-engine.md for the recipe this follows).
#
#   eval "$(scripts/docker-engine.sh)"          # start (idempotent); sets DOCKER_HOST
#   eval "$(scripts/docker-engine.sh start)"    # the same
#   scripts/docker-engine.sh status             # exit 0 if the engine answers
#   scripts/docker-engine.sh stop               # stop the engine this script started
#
# Installs docker.io (+ busybox-static) with apt when `dockerd` is missing, then runs
# dockerd with its own socket, data, exec root and log under $BERTH_DOCKER_ROOT
# (default /var/lib/berth-docker; it must be on ext4/xfs, not on an overlay filesystem,
# or the slow vfs driver is used). An engine that already answers on that socket is
# reused. Everything but the final `export DOCKER_HOST=…` line goes to stderr, so the
# output can be eval'ed. Needs root (or sudo) the first time, for apt and dockerd.
set -euo pipefail

ROOT_DIR="${BERTH_DOCKER_ROOT:-/var/lib/berth-docker}"
SOCK="$ROOT_DIR/docker.sock"
HOST="unix://$SOCK"
TIMEOUT="${BERTH_DOCKER_TIMEOUT:-60}"
CMD="${1:-start}"

say() { echo "docker-engine: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

docker_cli() {
  # Any docker CLI talks to the engine; the API version is negotiated.
  DOCKER_HOST="$HOST" timeout 10 docker "$@"
}

answers() {
  [ -S "$SOCK" ] && command -v docker >/dev/null 2>&1 && docker_cli version >/dev/null 2>&1
}

pid_alive() {
  [ -f "$ROOT_DIR/dockerd.pid" ] && kill -0 "$(cat "$ROOT_DIR/dockerd.pid")" 2>/dev/null
}

install_engine() {
  if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "dockerd is missing and there is no apt-get to install it"
    return 1
  fi
  say "installing docker.io (about 65 MB)…"
  local log="${TMPDIR:-/tmp}/berth-docker-apt.log"
  if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
              docker.io busybox-static; } >"$log" 2>&1; then
    say "apt-get failed; its output:"
    cat "$log" >&2
    return 1
  fi
}

storage_driver() {
  local fs
  fs="$(df -T "$ROOT_DIR" 2>/dev/null | awk 'NR==2 {print $2}')"
  case "$fs" in
    overlay|overlayfs|aufs|tmpfs)
      say "$ROOT_DIR is on $fs: overlay2 cannot work there; using the (slow) vfs driver"
      echo vfs ;;
    *) echo overlay2 ;;
  esac
}

start() {
  if answers; then
    echo "export DOCKER_HOST=$HOST"
    return 0
  fi
  install_engine
  $SUDO mkdir -p "$ROOT_DIR"
  # One starter at a time (parallel test sessions); the others wait and reuse it.
  exec 9>"$ROOT_DIR/.lock"
  flock -w "$TIMEOUT" 9 || { say "could not take $ROOT_DIR/.lock"; return 1; }
  if ! answers && ! pid_alive; then
    local driver
    driver="$(storage_driver)"
    rm -f "$SOCK" "$ROOT_DIR/dockerd.pid"
    say "starting dockerd (root $ROOT_DIR, storage $driver)"
    # setsid: the engine outlives this shell and is not hit by its Ctrl-C.
    $SUDO setsid dockerd -H "$HOST" --data-root "$ROOT_DIR/data" --exec-root "$ROOT_DIR/exec" \
      --pidfile "$ROOT_DIR/dockerd.pid" --storage-driver="$driver" \
      >>"$ROOT_DIR/dockerd.log" 2>&1 </dev/null &
  fi
  local deadline=$((SECONDS + TIMEOUT))
  until answers; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "the engine did not answer within ${TIMEOUT} s; last lines of $ROOT_DIR/dockerd.log:"
      tail -n 20 "$ROOT_DIR/dockerd.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  flock -u 9
  say "engine ready at $HOST"
  echo "export DOCKER_HOST=$HOST"
}

stop() {
  if ! pid_alive; then
    say "no engine running from $ROOT_DIR"
    return 0
  fi
  local pid
  pid="$(cat "$ROOT_DIR/dockerd.pid")"
  $SUDO kill "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "dockerd ($pid) did not exit within 30 s"
    return 1
  fi
  $SUDO umount "$ROOT_DIR/exec/netns/default" 2>/dev/null || true
  say "engine stopped (data kept in $ROOT_DIR/data)"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  status) answers && { say "engine answers at $HOST"; echo "export DOCKER_HOST=$HOST"; } ;;
  *) say "usage: $0 [start|stop|status]"; exit 2 ;;
esac
