#!/usr/bin/env bash
# Build (if needed) and start the three-node cluster, then wait until every node is
# healthy (/healthz) and the route mesh is complete (/routez).
#
#   deploy/cluster-up.sh
#
# Environment:
#   BASE_IMAGE    base for deploy/Dockerfile (default pybroker-base:bookworm, built by
#                 deploy/build-base.sh when missing; set python:3.11-slim-bookworm to use a registry)
#   NO_BUILD=1    skip `compose build` (use the existing pybroker:latest)
#   WAIT_S        seconds to wait for health + mesh (default 180)
#   COMPOSE_PROJECT_NAME  as usual for compose (default: the repository directory name)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMPOSE="$ROOT/deploy/compose.sh"
export BASE_IMAGE=${BASE_IMAGE:-pybroker-base:bookworm}
WAIT_S=${WAIT_S:-180}

log() { printf '[cluster-up] %s\n' "$*" >&2; }

if [ "${NO_BUILD:-0}" != 1 ]; then
    if [ "${BASE_IMAGE%%:*}" = pybroker-base ] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE missing: building it with deploy/build-base.sh"
        if [ "$(id -u)" -eq 0 ]; then
            BASE_TAG="$BASE_IMAGE" "$ROOT/deploy/build-base.sh"
        else
            sudo --preserve-env=MIRROR,SUITE,ROOTFS,EXTRA_CA_DIR BASE_TAG="$BASE_IMAGE" "$ROOT/deploy/build-base.sh"
        fi
    fi
    log "building pybroker:latest on $BASE_IMAGE"
    "$COMPOSE" build
fi

log "starting n1 n2 n3"
"$COMPOSE" up -d

# One line per node: "<service> <health> <num_routes>" (num_routes -1 when unreachable).
node_state() {
    local svc cid health routes
    for svc in $("$COMPOSE" config --services); do
        cid=$("$COMPOSE" ps -q "$svc")
        if [ -z "$cid" ]; then echo "$svc missing -1"; continue; fi
        health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$cid")
        routes=$(docker exec "$cid" python -c 'import json, urllib.request
print(json.load(urllib.request.urlopen("http://127.0.0.1:8222/routez", timeout=2))["num_routes"])' 2>/dev/null || echo -1)
        echo "$svc $health $routes"
    done
}

deadline=$((SECONDS + WAIT_S))
while :; do
    state=$(node_state)
    total=$(wc -l <<<"$state")
    ready=$(awk -v want=$(( $(wc -l <<<"$state") - 1 )) '$2 == "healthy" && $3 == want' <<<"$state" | wc -l)
    if [ "$ready" -eq "$total" ]; then
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "cluster not ready after ${WAIT_S}s:"
        printf '%s\n' "$state" >&2
        "$COMPOSE" ps >&2 || true
        "$COMPOSE" logs --tail=40 >&2 || true
        exit 1
    fi
    sleep 1
done

printf '%s\n' "$state" | awk '{printf "[cluster-up] %s %s, %s routes\n", $1, $2, $3}' >&2
log "ready: clients nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
log "       monitoring http://127.0.0.1:8222 :8223 :8224 (/healthz /varz /routez /jsz)"
