#!/usr/bin/env bash
# Makes sure a Docker daemon with the gVisor runtime `runsc` is running, for the
# deployment tests (crates/sdserve/tests/deploy_*.rs). Run as root on a Debian
# machine; CI (.ci/run) calls it after `apt-get install docker.io runsc docker-compose`.
#
#   bash scripts/docker-up.sh        # idempotent: does nothing if both are there
#
# runsc is registered with `--network=host`: gVisor's own network stack needs
# privileges a nested CI machine lacks, and the tests only need the host's loopback.
# Exits non-zero, with the daemon's log, when it cannot start one: the tests must
# then fail loudly, not skip.
set -euo pipefail

log=${DOCKERD_LOG:-/tmp/sdserve-dockerd.log}

has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

if docker info >/dev/null 2>&1; then
  if has_runsc; then
    echo "docker: running, runsc registered"
    exit 0
  fi
  echo "docker is running without the runsc runtime: add it to /etc/docker/daemon.json" >&2
  echo '  {"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}}' >&2
  echo "and restart the daemon (kill -HUP \$(pidof dockerd) reloads runtimes)" >&2
  exit 1
fi

command -v dockerd >/dev/null || { echo "no dockerd: apt-get install -y docker.io" >&2; exit 1; }
runsc=$(command -v runsc) || { echo "no runsc: apt-get install -y runsc" >&2; exit 1; }

mkdir -p /etc/docker
if [ ! -f /etc/docker/daemon.json ]; then
  cat > /etc/docker/daemon.json <<EOF
{"runtimes": {"runsc": {"path": "$runsc", "runtimeArgs": ["--network=host"]}}}
EOF
elif ! grep -q '"runsc"' /etc/docker/daemon.json; then
  echo "/etc/docker/daemon.json exists without a runsc runtime; add:" >&2
  echo "  \"runtimes\": {\"runsc\": {\"path\": \"$runsc\", \"runtimeArgs\": [\"--network=host\"]}}" >&2
  exit 1
fi

echo "docker: starting dockerd (log: $log)"
# setsid: the daemon outlives this script and the test run that started it.
setsid dockerd >"$log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    has_runsc || { echo "dockerd started without runsc" >&2; exit 1; }
    echo "docker: ready"
    exit 0
  fi
  sleep 0.5
done
echo "dockerd did not come up in 30 s:" >&2
tail -n 40 "$log" >&2
exit 1
