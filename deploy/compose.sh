#!/usr/bin/env bash
# Run Docker Compose on the repository's compose.yaml with whichever CLI this machine has:
# the `docker compose` plugin (v2) or the standalone `docker-compose` (v1.27+).
#   deploy/compose.sh ps | logs -f n2 | kill n2 | ...
# COMPOSE_PROJECT_NAME (compose's own variable) selects the project, as usual.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if docker compose version >/dev/null 2>&1; then
    exec docker compose --project-directory "$ROOT" -f "$ROOT/compose.yaml" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose --project-directory "$ROOT" -f "$ROOT/compose.yaml" "$@"
else
    echo "neither 'docker compose' nor 'docker-compose' is available" >&2
    exit 127
fi
