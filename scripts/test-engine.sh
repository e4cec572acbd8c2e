#!/usr/bin/env bash
# Starts (or stops) a private Docker engine for the test suite and the benchmarks.
#
#   scripts/test-engine.sh start [DIR]   # idempotent; prints DOCKER_HOST=... on its last line
#   scripts/test-engine.sh stop  [DIR]
#   scripts/test-engine.sh host  [DIR]   # prints the socket address only
#
# DIR defaults to $CA_ENGINE_DIR or /tmp/container-agent-engine. The engine has its own
# data root, exec root, pidfile and socket there, no bridge and no iptables, and the image
# ca-busybox:latest imported from Debian's busybox-static (no registry is reachable).
set -euo pipefail

cmd=${1:-start}
dir=${2:-${CA_ENGINE_DIR:-/tmp/container-agent-engine}}
sock="$dir/docker.sock"
host="unix://$sock"
image=${CA_TEST_IMAGE:-ca-busybox:latest}

answers() { DOCKER_HOST="$host" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

need_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "test-engine: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

import_image() {
  if DOCKER_HOST="$host" docker image inspect "$image" >/dev/null 2>&1; then return; fi
  local root
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
  tar -C "$root" -c . | DOCKER_HOST="$host" docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  rm -rf "$root"
}

# dockerd takes an inotify instance for every followed json-file log stream; the default
# 128 per user (root: the engines and the agents under test share it) runs out when tests
# follow hundreds of containers, and the agent then falls back to polling.
raise_inotify_limits() {
  local f=/proc/sys/fs/inotify/max_user_instances
  if [ -w "$f" ] && [ "$(cat "$f")" -lt 1024 ]; then echo 1024 >"$f" || true; fi
  f=/proc/sys/fs/inotify/max_user_watches
  if [ -w "$f" ] && [ "$(cat "$f")" -lt 65536 ]; then echo 65536 >"$f" || true; fi
}

start() {
  raise_inotify_limits
  if answers; then import_image; echo "DOCKER_HOST=$host"; return; fi
  need_packages
  mkdir -p "$dir/data" "$dir/exec"
  # A stale pidfile from a killed engine would stop dockerd from starting.
  if [ -f "$dir/dockerd.pid" ] && ! kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
    rm -f "$dir/dockerd.pid"
  fi
  # --live-restore keeps containers running while this engine restarts (the restart tests need it).
  nohup dockerd \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    -H "$host" --bridge=none --iptables=false --ip6tables=false \
    --live-restore --log-level warn \
    >>"$dir/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 300); do
    if answers; then import_image; echo "DOCKER_HOST=$host"; return; fi
    sleep 0.1
  done
  echo "test-engine: dockerd did not answer at $host within 30 s; its log:" >&2
  tail -n 30 "$dir/dockerd.log" >&2 || true
  exit 1
}

stop() {
  if [ -f "$dir/dockerd.pid" ]; then
    local pid
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  host) echo "$host" ;;
  *) echo "usage: $0 start|stop|host [DIR]" >&2; exit 2 ;;
esac
