#!/usr/bin/env bash
# Start a private Docker engine for Moorage's images and the Docker backend's
# tests, unless one already answers on its socket. It has its own socket,
# data root and exec root, so it never meets a system dockerd; it creates no
# bridge and touches no iptables (sandboxes run with --network none, and
# builds with --network none too). Needs root and the docker.io package.
# Usage: container/dockerd.sh            (prints the DOCKER_HOST to use)
set -euo pipefail
RUN=${MOORAGE_DOCKERD_DIR:-/run/moorage-dockerd}
DATA=${MOORAGE_DOCKERD_DATA:-/var/lib/moorage-dockerd}
SOCK="$RUN/docker.sock"
export DOCKER_HOST="unix://$SOCK"

answers() { [ -S "$SOCK" ] && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! answers; then
  command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd not found (apt-get install docker.io)" >&2; exit 1; }
  mkdir -p "$RUN" "$DATA"
  # A previous engine that died leaves its pid file and socket behind.
  if [ -f "$RUN/dockerd.pid" ] && ! kill -0 "$(cat "$RUN/dockerd.pid")" 2>/dev/null; then
    rm -f "$RUN/dockerd.pid" "$SOCK"
  fi
  setsid dockerd --host "$DOCKER_HOST" --data-root "$DATA" --exec-root "$RUN/exec" \
    --pidfile "$RUN/dockerd.pid" --bridge none --iptables=false --ip6tables=false \
    >"$RUN/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do answers && break; sleep 0.5; done
  answers || { echo "dockerd.sh: the engine did not start; its log:" >&2; tail -20 "$RUN/dockerd.log" >&2; exit 1; }
fi
echo "$DOCKER_HOST"
