#!/usr/bin/env bash
# The MLflow tracking server that cluster sweeps log to: PostgreSQL backend store, artifacts
# in S3 (or a shared path) served through the server, and MLflow's basic-auth app.
#
#   cluster/mlflow-server.sh            run in the foreground (systemd, a container, tmux)
#   cluster/mlflow-server.sh --port 5001 ...   extra arguments go to `mlflow server`
#
# Every setting and secret comes from the environment (a systemd EnvironmentFile, a Kubernetes
# Secret, your shell), never from a committed file, and none of them appears on a command line
# (`ps` shows command lines to every user of the machine):
#
# Required
#   MLFLOW_BACKEND_STORE_URI       postgresql://mlflow@db.internal:5432/mlflow
#                                  Keep the password out of the URI: libpq reads PGPASSWORD (or
#                                  ~/.pgpass / PGPASSFILE). A password inside the URI works too.
#   MLFLOW_ARTIFACTS_DESTINATION   s3://my-bucket/mlflow-artifacts, or /mnt/mdfr/mlartifacts
#                                  (clients upload through the server: they need no S3 access)
#   MLFLOW_FLASK_SERVER_SECRET_KEY random string; the auth app's CSRF key (same on every replica)
#   MLFLOW_AUTH_ADMIN_PASSWORD     the first start creates the admin user with it; later starts
#                                  ignore it (rotate through the auth API)
# Optional
#   MLFLOW_AUTH_ADMIN_USERNAME     admin user name                         (admin)
#   MLFLOW_AUTH_DATABASE_URI       where users and permissions live        (the backend store;
#                                  its tables and migration table do not collide with tracking's)
#   MLFLOW_AUTH_DEFAULT_PERMISSION what users may do with others' runs     (READ)
#   MLFLOW_AUTH_CACHE_TTL_SECONDS  how long a worker trusts a checked login (60; 0: check every
#                                  request). Each check is a deliberately slow password hash
#                                  (~0.4 s of CPU): uncached, a server with 4 workers answered
#                                  about 10 requests/s and 64 concurrent trials exhausted its
#                                  connection pool (mdfr bench scale). Cached, a password change
#                                  reaches the other workers within this many seconds.
#   MLFLOW_HOST / MLFLOW_PORT      bind address and port                   (127.0.0.1 / 5000)
#   MLFLOW_WORKERS                 server worker processes                 (4)
#   MLFLOW_SERVER_ALLOWED_HOSTS    Host headers to accept when serving beyond loopback, e.g.
#                                  "mlflow.internal,mlflow.internal:5000,10.0.*"
#   MLFLOW_BIN                     the `mlflow` executable (this project's .venv, else PATH)
#   PGPASSWORD, AWS_* ...          read by libpq and boto3 as usual
set -euo pipefail

die() { echo "mlflow-server.sh: error: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql://user@host:5432/db)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix or a shared path)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (a random string, e.g. openssl rand -hex 32)}"
export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
export MLFLOW_HOST=${MLFLOW_HOST:-127.0.0.1}
export MLFLOW_PORT=${MLFLOW_PORT:-5000}
export MLFLOW_WORKERS=${MLFLOW_WORKERS:-4}
# MLflow 3's background job runner (GenAI scorers, a dozen processes) is not used by sweeps.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql*://*) ;;
  sqlite:///*) echo "mlflow-server.sh: warning: SQLite backend: fine for a workstation or a test, not for a cluster's concurrent trials" >&2 ;;
  *) die "MLFLOW_BACKEND_STORE_URI must be postgresql://... (or sqlite:/// for a workstation), got a '${MLFLOW_BACKEND_STORE_URI%%:*}' URI" ;;
esac

if [ -n "${MLFLOW_BIN:-}" ]; then :
elif [ -x "$ROOT/.venv/bin/mlflow" ]; then MLFLOW_BIN=$ROOT/.venv/bin/mlflow
else MLFLOW_BIN=$(command -v mlflow || true); fi
[ -n "$MLFLOW_BIN" ] && [ -x "$MLFLOW_BIN" ] || die "no 'mlflow' executable (pip install 'mlflow[auth]' psycopg2-binary, or set MLFLOW_BIN)"

# The basic-auth app reads its database URI only from an ini file. Write it at start-up into a
# private directory and delete it on exit, so a URI that carries a password never rests on disk
# beyond the server's lifetime. The admin name and password stay in the environment (MLflow's
# MLFLOW_AUTH_ADMIN_* variables win over the file).
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/mdfr-mlflow.XXXXXX")
chmod 700 "$run_dir"
child=""
cleanup() {
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child" 2>/dev/null
  rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

auth_uri=${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
# configparser treats '%' as interpolation: URL-encoded passwords (%40) must be doubled.
(
  umask 077
  cat >"$run_dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${auth_uri//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
EOF
)
export MLFLOW_AUTH_CONFIG_PATH=$run_dir/basic_auth.ini

echo "mlflow-server.sh: serving http://$MLFLOW_HOST:$MLFLOW_PORT (backend ${MLFLOW_BACKEND_STORE_URI%%://*}, artifacts $MLFLOW_ARTIFACTS_DESTINATION, basic auth on)" >&2
# Backend URI, artifact destination, host, port and workers reach `mlflow server` through its
# own environment variables, not argv. Run it as a child (not exec) so the trap above removes
# the auth file when the server stops.
"$MLFLOW_BIN" server --app-name basic-auth --serve-artifacts "$@" &
child=$!
wait "$child"
