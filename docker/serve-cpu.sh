#!/bin/bash
# PID 1 of the CPU serving image: nginx (the published ports 8000-8002, the fence of
# docker/nginx/) in front
# of `resnet-triton serve` (tritonserver on loopback ports 18000-18002, supervised:
# it exits when the server or a Python-backend stub dies). The container ends
# when either process ends, so Docker's restart policy covers both.
#
# docker stop (SIGTERM): nginx stops accepting and finishes the requests it holds
# (SIGQUIT, its graceful stop); Triton finishes its in-flight requests.
set -uo pipefail
mkdir -p /tmp/nginx
# The fence's keys, admin key and rate limit (SECURITY.md); a bad setting stops here.
resnet-triton fence --out /tmp/nginx/fence || exit 1
export RESNET_TRITON_FENCE=nginx  # serve's banner says so
nginx -c /etc/resnet-triton/nginx.conf &
nginx_pid=$!
resnet-triton serve --repository "${MODEL_REPOSITORY:-/workspace/model_repository}" \
    --address 127.0.0.1 --http-port 18000 --grpc-port 18001 --metrics-port 18002 \
    --allocator jemalloc "$@" &
serve_pid=$!

stopping=0
stop() {
    stopping=1
    kill -QUIT "$nginx_pid" 2>/dev/null  # nginx's graceful stop
    kill -TERM "$serve_pid" 2>/dev/null
}
trap stop TERM INT

# The exit status of process $1 once it has ended (a trapped signal interrupts `wait`).
wait_for() {
    local code
    while :; do
        wait "$1"
        code=$?
        kill -0 "$1" 2>/dev/null || return "$code"
    done
}

wait -n "$nginx_pid" "$serve_pid"
failed=0
if [ "$stopping" = 0 ]; then
    failed=1
    kill -0 "$nginx_pid" 2>/dev/null && gone="resnet-triton serve" || gone=nginx
    echo "serve-cpu: $gone exited; stopping the container" >&2
    stop
fi
wait_for "$serve_pid"
code=$?
wait_for "$nginx_pid"
if [ "$failed" = 1 ] && [ "$code" = 0 ]; then
    code=1
fi
exit "$code"
