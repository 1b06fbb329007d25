#!/usr/bin/env bash
# Start the MLflow UI on the pipeline's tracking store and print its URL.
#
#   scripts/launch_mlflow.sh [PORT]        (default port 5000; the next free one when busy)
#
# Store: MLFLOW_TRACKING_URI, else the embedded SQLite store <repo>/mlflow.db (as the stages use).
# Artifacts: the pipeline's artifact root (PIPELINE_ARTIFACT_ROOT, else tracking.artifact_location
# in params.yaml), so runs logged straight to the database show their artifacts too.
# Binds to 127.0.0.1 unless MLFLOW_HOST says otherwise. Stop it with Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${1:-${MLFLOW_PORT:-5000}}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
CONFIG="${PIPELINE_CONFIG:-$ROOT/params.yaml}"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    BIN="$ROOT/.venv/bin/"
else
    BIN=""  # an activated environment or the CI runner's Python
fi

if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    echo "usage: $0 [PORT]  (PORT must be a number from 1 to 65535, got '$PORT')" >&2
    exit 2
fi

# One Python call resolves the store, the artifact root and a free port from the same
# code the stages use; it prints them one per line (the store URI is never echoed with a password).
mapfile -t RESOLVED < <(
    cd "$ROOT" && "${BIN}python" - "$CONFIG" "$HOST" "$PORT" <<'PY'
import socket
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.settings import redact_uri, tracking_uri
from pipeline.tracking.session import artifact_location

config_path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load_config(Path(config_path))
uri = tracking_uri(config.root)


def free(candidate: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, candidate))
        except OSError:
            return False
    return True


chosen = next((p for p in range(port, min(port + 50, 65536)) if free(p)), None)
if chosen is None:
    sys.exit(f"no free port from {port} to {port + 49} on {host}")
print(uri)
print(redact_uri(uri))
print(artifact_location(config))
print(chosen)
PY
)
if ((${#RESOLVED[@]} != 4)); then
    echo "could not resolve the tracking store or a free port (see above)" >&2
    exit 1
fi
STORE="${RESOLVED[0]}"
SAFE_STORE="${RESOLVED[1]}"
ARTIFACTS="${RESOLVED[2]}"
CHOSEN="${RESOLVED[3]}"

if [[ "$STORE" == http://* || "$STORE" == https://* ]]; then
    echo "MLFLOW_TRACKING_URI is already an MLflow server: open $SAFE_STORE"
    exit 0
fi
if [[ "$CHOSEN" != "$PORT" ]]; then
    echo "port $PORT is busy; using $CHOSEN"
fi
URL_HOST="$HOST"
[[ "$HOST" == "0.0.0.0" ]] && URL_HOST="127.0.0.1"
echo "MLflow UI: http://$URL_HOST:$CHOSEN"
echo "  store:     $SAFE_STORE"
echo "  artifacts: $ARTIFACTS"

cd "$ROOT"
exec "${BIN}mlflow" server \
    --backend-store-uri "$STORE" \
    --artifacts-destination "$ARTIFACTS" \
    --host "$HOST" \
    --port "$CHOSEN" \
    --workers 1
