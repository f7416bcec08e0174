#!/bin/sh
# The balancer of replicas.yml: nginx with lb.conf. Its upstream lists live in /tmp (a
# tmpfs: the root is read-only); at start they name the compose service `replica`, which
# Docker's DNS resolves to every container with that alias. `resnet-triton rollout`
# rewrites them with the replicas it starts (which it gives the alias) and reloads.
# `resnet-triton fence` first: the balancer is the door, with the image's fence.
set -eu
mkdir -p /tmp/nginx/upstreams
resnet-triton fence --out /tmp/nginx/fence
echo "server replica:8000 max_fails=1 fail_timeout=10s;" > /tmp/nginx/upstreams/http.conf
echo "server replica:8001 max_fails=1 fail_timeout=10s;" > /tmp/nginx/upstreams/grpc.conf
exec nginx -c /etc/resnet-triton/lb.conf
