#!/usr/bin/env bash
# Stop and remove the cluster's containers and network.
#   deploy/cluster-down.sh            # keep the JetStream data volumes (n1-data, n2-data, n3-data)
#   deploy/cluster-down.sh --volumes  # also delete them
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
args=(down --remove-orphans --timeout 20)
case "${1:-}" in
    "") ;;
    -v|--volumes) args+=(--volumes) ;;
    *) echo "usage: $0 [--volumes]" >&2; exit 2 ;;
esac
exec "$ROOT/deploy/compose.sh" "${args[@]}"
