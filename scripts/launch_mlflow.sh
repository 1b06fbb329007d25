#!/usr/bin/env bash
# Start the MLflow UI (and tracking server) on the pipeline's store and print its URL.
#
#   scripts/launch_mlflow.sh [PORT]          the UI on your own store (default port 5000; the next free one)
#   scripts/launch_mlflow.sh --team [PORT]   a team's tracking server: PostgreSQL backend store, proxied
#                                            artifacts, MLflow's basic-auth users
#
# Store: MLFLOW_TRACKING_URI, else the embedded SQLite store <repo>/mlflow.db (as the stages use).
# Artifacts: the pipeline's artifact root (PIPELINE_ARTIFACT_ROOT, else tracking.artifact_location
# in params.yaml), so runs logged straight to the database show their artifacts too.
# The store URI (and its password) reaches the server through its environment, never a command line
# anyone on the machine can read with `ps`.
#
# Team mode: the store must be PostgreSQL; the server owns the artifact root and serves it
# (clients log and read artifacts through it, with no storage credentials of their own); users
# sign in with MLflow's basic auth. Its users live in $PIPELINE_SERVER_DIR/basic_auth.db (default
# <repo>/.mlflow-server); the first start needs MLFLOW_AUTH_ADMIN_PASSWORD (the admin is
# MLFLOW_AUTH_ADMIN_USERNAME, default admin). Your own MLFLOW_AUTH_CONFIG_PATH wins if set.
# Clients then set MLFLOW_TRACKING_URI=http://<host>:<port> and MLFLOW_TRACKING_USERNAME/PASSWORD.
#
# Binds to 127.0.0.1 unless MLFLOW_HOST says otherwise. Stop it with Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEAM=0
if [[ "${1:-}" == "--team" ]]; then
    TEAM=1
    shift
fi
PORT="${1:-${MLFLOW_PORT:-5000}}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
CONFIG="${PIPELINE_CONFIG:-$ROOT/params.yaml}"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    BIN="$ROOT/.venv/bin/"
else
    BIN=""  # an activated environment or the CI runner's Python
fi

if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    echo "usage: $0 [--team] [PORT]  (PORT must be a number from 1 to 65535, got '$PORT')" >&2
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
from pipeline.tracking import store
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
print("server" if store.is_server(uri) else "postgresql" if store.is_postgres(uri) else "database")
PY
)
if ((${#RESOLVED[@]} != 5)); then
    echo "could not resolve the tracking store or a free port (see above)" >&2
    exit 1
fi
STORE="${RESOLVED[0]}"
SAFE_STORE="${RESOLVED[1]}"
ARTIFACTS="${RESOLVED[2]}"
CHOSEN="${RESOLVED[3]}"
KIND="${RESOLVED[4]}"

if [[ "$KIND" == "server" ]]; then
    echo "MLFLOW_TRACKING_URI is already an MLflow server: open $SAFE_STORE"
    exit 0
fi

# The store and the artifact root reach `mlflow server` (and the workers it starts) by environment.
export MLFLOW_BACKEND_STORE_URI="$STORE"
export MLFLOW_ARTIFACTS_DESTINATION="$ARTIFACTS"
# MLflow's GenAI job runner starts a dozen worker processes the pipeline never uses.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
EXTRA=()
if ((TEAM)); then
    if [[ "$KIND" != "postgresql" ]]; then
        echo "team mode needs a PostgreSQL store: set MLFLOW_TRACKING_URI=postgresql+psycopg2://… (got $SAFE_STORE)" >&2
        exit 2
    fi
    if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
        STATE="${PIPELINE_SERVER_DIR:-$ROOT/.mlflow-server}"
        mkdir -p "$STATE"
        chmod 700 "$STATE"
        if [[ ! -f "$STATE/basic_auth.db" && -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
            echo "team mode, first start: set MLFLOW_AUTH_ADMIN_PASSWORD for the admin user (${MLFLOW_AUTH_ADMIN_USERNAME:-admin})" >&2
            exit 2
        fi
        # No secret in this file: users and password hashes are in basic_auth.db beside it.
        cat > "$STATE/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$STATE/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A checked password is trusted for a minute (each check is a deliberately slow hash).
auth_cache_ttl_seconds = 60
INI
        export MLFLOW_AUTH_CONFIG_PATH="$STATE/basic_auth.ini"
    fi
    if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
        MLFLOW_FLASK_SERVER_SECRET_KEY="$("${BIN}python" -c 'import secrets; print(secrets.token_hex(32))')"
        export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    EXTRA+=(--app-name basic-auth)
fi

if [[ "$CHOSEN" != "$PORT" ]]; then
    echo "port $PORT is busy; using $CHOSEN"
fi
URL_HOST="$HOST"
[[ "$HOST" == "0.0.0.0" ]] && URL_HOST="127.0.0.1"
echo "MLflow UI: http://$URL_HOST:$CHOSEN"
# MLflow 3's UI opens experiments in its GenAI view; this opens the model-training view.
echo "  model training view: http://$URL_HOST:$CHOSEN/#/experiments?workflowType=machine_learning"
echo "  store:     $SAFE_STORE"
echo "  artifacts: $ARTIFACTS"
if ((TEAM)); then
    echo "  team mode: basic auth (users in ${MLFLOW_AUTH_CONFIG_PATH}), artifacts served by this server"
    echo "  clients:   MLFLOW_TRACKING_URI=http://$URL_HOST:$CHOSEN MLFLOW_TRACKING_USERNAME=… MLFLOW_TRACKING_PASSWORD=…"
fi

cd "$ROOT"
exec "${BIN}mlflow" server \
    --serve-artifacts \
    --host "$HOST" \
    --port "$CHOSEN" \
    --workers 1 \
    "${EXTRA[@]}"
