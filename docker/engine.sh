#!/usr/bin/env bash
# A Docker daemon for this checkout's containers, where none runs (these machines
# have Debian's docker.io but no init system to start it).
#
#   docker/engine.sh start   starts dockerd when no daemon answers (needs root),
#                            recording its pid in .docker/dockerd.pid
#   docker/engine.sh stop    stops the daemon that `start` started, and only that one
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=.docker/dockerd.pid

case "${1:-}" in
start)
    if docker info >/dev/null 2>&1; then
        echo "a Docker daemon is running"
        exit 0
    fi
    command -v dockerd >/dev/null || { echo "error: dockerd not found: run make docker-tools" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "error: no Docker daemon answers, and starting dockerd needs root" >&2; exit 1; }
    mkdir -p .docker
    setsid dockerd >.docker/dockerd.log 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 120); do
        if docker info >/dev/null 2>&1; then
            echo "started dockerd (pid $(cat "$pidfile"); log .docker/dockerd.log; stop: docker/engine.sh stop)"
            exit 0
        fi
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.5
    done
    echo "error: dockerd did not answer within 60 s; .docker/dockerd.log ends:" >&2
    tail -5 .docker/dockerd.log >&2
    exit 1
    ;;
stop)
    if [ ! -f "$pidfile" ]; then
        echo "no dockerd started by docker/engine.sh"
        exit 0
    fi
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
        echo "stopped dockerd (pid $pid)"
    fi
    rm -f "$pidfile"
    ;;
*)
    echo "usage: docker/engine.sh start|stop" >&2
    exit 2
    ;;
esac
