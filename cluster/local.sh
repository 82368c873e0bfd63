#!/usr/bin/env bash
# A Ray cluster of one head and N worker nodes on this machine, on loopback, with token auth.
#
#   cluster/local.sh start [N]     head + N workers (default 1); prints address and submit line
#   cluster/local.sh status        which nodes are up; prints the same connection details
#   cluster/local.sh stop          stops exactly the nodes this script started
#   cluster/local.sh kill-worker I SIGKILLs worker I's whole process tree (a node crash drill)
#
# Every node is its own `ray start` with its own temp dir, ports and resources, so Ray sees
# N+1 distinct nodes: the same code paths as a real cluster (scheduling across nodes, node
# loss, job API), on a workstation or in tests.
#
# Environment (all optional):
#   MDFR_RAY_PORT             GCS port of the head                      (6390)
#   MDFR_RAY_DASHBOARD_PORT   dashboard / job API port                  (8275)
#   MDFR_RAY_TMP              state, logs, token and node temp dirs: a private folder
#                             ($XDG_RUNTIME_DIR/mdfr-ray, else ~/.cache/mdfr-ray; mode 0700)
#   MDFR_RAY_HEAD_CPUS        CPUs the head offers to trials            (1)
#   MDFR_RAY_WORKER_CPUS      CPUs each worker offers                   (1)
#   MDFR_RAY_WORKER_GPUS      GPUs each worker offers                   (0)
#   MDFR_RAY_OBJECT_STORE_MB  object store per node, MB                 (256)
#   MDFR_RAY_START_TIMEOUT    seconds to wait for the cluster to form   (120)
#   MDFR_RAY_BIN              the `ray` executable  (.venv/bin/ray of this project, else PATH)
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH   use this token instead of generating
#                             $MDFR_RAY_TMP/auth_token
#
# The folder and the token in it are checked before use: a folder that is a symlink, belongs
# to another user or that other users may write, or a token file that is a symlink, belongs to
# another user or that others may read, is refused. (A fixed /tmp path would let another local
# user create it first and plant a token this script would then trust.)
# Anything else in the environment (MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_* ...) is inherited
# by every node, hence by every trial and by jobs submitted to the cluster.
#
# Loopback only: every node runs `ray start` through cluster/ray_loopback.py, so its GCS,
# raylet, object manager, agents and workers listen on 127.0.0.1 and nowhere else. Clients
# that connect with a Ray address (ray.init, `ray status`) need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# in their environment, as printed by `start`; the job API (HTTP) and `mdfr sweep run` need
# nothing more.
set -euo pipefail

die() { echo "local.sh: error: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

PORT=${MDFR_RAY_PORT:-6390}
DASH_PORT=${MDFR_RAY_DASHBOARD_PORT:-8275}
# Per-user, private defaults (short: Ray puts unix sockets under the temp dir and socket paths
# max out at 107 bytes). Never a fixed name under the shared /tmp.
if [ -n "${MDFR_RAY_TMP:-}" ]; then
  TMP=$MDFR_RAY_TMP
elif [ -n "${XDG_RUNTIME_DIR:-}" ] && [ -d "$XDG_RUNTIME_DIR" ] && [ -O "$XDG_RUNTIME_DIR" ]; then
  TMP=$XDG_RUNTIME_DIR/mdfr-ray
else
  TMP=${XDG_CACHE_HOME:-$HOME/.cache}/mdfr-ray
fi
HEAD_CPUS=${MDFR_RAY_HEAD_CPUS:-1}
WORKER_CPUS=${MDFR_RAY_WORKER_CPUS:-1}
WORKER_GPUS=${MDFR_RAY_WORKER_GPUS:-0}
OBJECT_STORE_MB=${MDFR_RAY_OBJECT_STORE_MB:-256}
START_TIMEOUT=${MDFR_RAY_START_TIMEOUT:-120}

if [ -n "${MDFR_RAY_BIN:-}" ]; then
  RAY_BIN=$MDFR_RAY_BIN
elif [ -x "$ROOT/.venv/bin/ray" ]; then
  RAY_BIN=$ROOT/.venv/bin/ray
else
  RAY_BIN=$(command -v ray || true)
fi
[ -n "$RAY_BIN" ] && [ -x "$RAY_BIN" ] || die "no 'ray' executable (make venv, or set MDFR_RAY_BIN)"
BIN_DIR=$(cd "$(dirname "$RAY_BIN")" && pwd)
# The Python that has Ray: nodes start through it (ray_loopback.py), as `ray` itself would.
PY=$BIN_DIR/python
if [ ! -x "$PY" ]; then
  PY=$(head -n 1 "$RAY_BIN" | sed -n 's/^#! *\([^ ]*\).*/\1/p')
  [ -n "$PY" ] && [ -x "$PY" ] || PY=$(command -v python3)
fi
# Jobs run `mdfr ...` on the head: its environment must find this project's executables.
export PATH="$BIN_DIR:$PATH"
export RAY_USAGE_STATS_ENABLED=0
# Ray keeps 127.0.0.1 as the node address only in its single-node mode; without it a node
# advertises and binds this machine's routable address. The nodes' processes and this
# script's own clients (count_alive_nodes) inherit it; ray_loopback.py lets nodes join anyway.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
LOOPBACK_SHIM=$HERE/ray_loopback.py
# `stop` drains each node before stopping it; on an idle loopback cluster a few seconds do.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}

ADDRESS=127.0.0.1:$PORT
DASH_URL=http://127.0.0.1:$DASH_PORT

# Token auth is always on. Nodes, `ray job submit` and drivers all read the same token:
# RAY_AUTH_TOKEN if the caller set it, else a file (never the shared ~/.ray/auth_token by
# default, so this cluster's token does not clash with other local Ray instances).
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$TMP/auth_token}
fi

owner_and_mode() { stat -c '%u %a' -- "$1"; }  # GNU stat: uid, octal mode

# The cluster's folder: created 0700 when missing; otherwise a real folder of ours that no
# other user may write (they could plant pid files for `stop` or a token for `start`).
secure_dir() {
  local d=$1 uid mode
  if [ ! -e "$d" ] && [ ! -L "$d" ]; then (umask 077 && mkdir -p -- "$d") || die "cannot create $d"; fi
  [ ! -L "$d" ] || die "$d is a symlink; refusing it as the cluster's private folder (set MDFR_RAY_TMP)"
  [ -d "$d" ] || die "$d is not a folder (set MDFR_RAY_TMP)"
  read -r uid mode <<<"$(owner_and_mode "$d")"
  [ "$uid" = "$(id -u)" ] || die "$d belongs to uid $uid, not you: refusing it (set MDFR_RAY_TMP to a folder of yours)"
  (( (8#$mode & 8#022) == 0 )) || die "$d is writable by other users (mode $mode): chmod 700 it or set MDFR_RAY_TMP"
}

# A token file found on disk is used only if it is ours and private.
check_token_file() {
  local f=$1 uid mode
  [ ! -L "$f" ] || die "token file $f is a symlink: refusing it; remove it to have a new token made"
  [ -f "$f" ] || die "token file $f is not a regular file"
  read -r uid mode <<<"$(owner_and_mode "$f")"
  [ "$uid" = "$(id -u)" ] || die "token file $f belongs to uid $uid, not you: refusing it; remove it to have a new token made"
  (( (8#$mode & 8#077) == 0 )) || die "token file $f is readable by other users (mode $mode): refusing it; remove it to have a new token made"
}

auth_token() { if [ -n "${RAY_AUTH_TOKEN:-}" ]; then printf %s "$RAY_AUTH_TOKEN"; else cat "$RAY_AUTH_TOKEN_PATH"; fi; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# A recorded pid may be long gone and reused: only touch a process group if one of its
# processes runs under this cluster's temp dir (every node process names it on its command line).
our_group() { [ -n "${1:-}" ] && ps -o args= -g "$1" 2>/dev/null | grep -qF -- "$TMP/"; }

node_pids() {  # "name pid" for every node this script has started and recorded
  local f
  for f in "$TMP"/head.pid "$TMP"/worker-*.pid; do
    [ -f "$f" ] || continue
    echo "$(basename "$f" .pid) $(cat "$f")"
  done
}

print_connection() {
  local token_env
  if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
    token_env="RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<your token>"
  else
    token_env="RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
  fi
  # ray.init/`ray status` on the Ray address must keep 127.0.0.1 too (see the header).
  token_env="$token_env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  cat <<EOF
Ray address:    $ADDRESS
Dashboard:      $DASH_URL   (token auth: open $DASH_URL and paste the token from ${RAY_AUTH_TOKEN_PATH:-\$RAY_AUTH_TOKEN})
Environment:    export $token_env
Submit a sweep: $token_env \\
                  ray job submit --address $DASH_URL --working-dir . -- \\
                  mdfr sweep run sweeps/smoke.yaml --tracking-uri http://127.0.0.1:5000
EOF
}

free_ports() {  # N distinct free loopback ports (the OS picks them; a tiny race is acceptable)
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_busy() {
  "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

start_node() {  # name, then extra `ray start` arguments
  local name=$1; shift
  local p extra=()
  read -r -a p <<<"$(free_ports 7)"
  # Only the head runs a Ray Client server; its default port (10001) may be taken.
  [ "$name" = head ] && extra=(--ray-client-server-port "${p[6]}")
  mkdir -p "$TMP/$name"
  # --block keeps `ray start` in the foreground as the parent of the node's processes, and
  # makes it a process-group leader with a reaper: stopping the group stops exactly this node,
  # never other Ray instances on the machine (`ray stop` would kill them all). setsid detaches
  # the node from the caller's terminal so Ctrl-C there does not take it down.
  # (Through the loopback shim: Ray's own CLI, with 127.0.0.1 kept as the node address.)
  setsid "$PY" "$LOOPBACK_SHIM" start --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 \
    --temp-dir "$TMP/$name" \
    --object-store-memory $((OBJECT_STORE_MB * 1024 * 1024)) \
    --node-manager-port "${p[0]}" --object-manager-port "${p[1]}" \
    --dashboard-agent-listen-port "${p[2]}" --dashboard-agent-grpc-port "${p[3]}" \
    --runtime-env-agent-port "${p[4]}" --metrics-export-port "${p[5]}" \
    "${extra[@]}" "$@" >"$TMP/$name.log" 2>&1 </dev/null &
  echo $! >"$TMP/$name.pid"
}

count_alive_nodes() {  # prints the number of alive nodes, or fails
  "$PY" - "$ADDRESS" <<'EOF' 2>/dev/null
import sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False, configure_logging=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
}

stop_all() {
  local name pid any=0 deadline
  # Workers first, then the head: a worker whose head is gone waits for it before giving up.
  while read -r name pid; do
    if pid_alive "$pid" && our_group "$pid"; then
      any=1
      # SIGTERM to `ray start --block` alone: it drains the node through the GCS and then
      # stops its own processes. Signalling the whole group instead kills the GCS first and
      # turns the drain into a 30 s timeout.
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 20))
      while pid_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.3; done
    fi
    # Whatever is left of the node's process group (see start_node) goes now.
    if our_group "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    rm -f "$TMP/$name.pid"
  done < <(node_pids | sort -r)
  if [ $any = 1 ]; then echo "local.sh: stopped the cluster at $ADDRESS"
  else echo "local.sh: nothing running under $TMP"; fi
}

cmd_start() {
  local n=${1:-1} i deadline alive name pid
  [[ $n =~ ^[0-9]+$ ]] || die "N must be a number of worker nodes, got '$n'"
  while read -r name pid; do
    pid_alive "$pid" && our_group "$pid" && die "a cluster is already running under $TMP ($name, pid $pid); run 'cluster/local.sh stop' first"
    rm -f "$TMP/$name.pid"
  done < <(node_pids)
  port_busy "$PORT" && die "port $PORT is in use: set MDFR_RAY_PORT to a free port"
  port_busy "$DASH_PORT" && die "port $DASH_PORT is in use: set MDFR_RAY_DASHBOARD_PORT to a free port"

  if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    if [ -e "$RAY_AUTH_TOKEN_PATH" ] || [ -L "$RAY_AUTH_TOKEN_PATH" ]; then
      check_token_file "$RAY_AUTH_TOKEN_PATH"
      [ -s "$RAY_AUTH_TOKEN_PATH" ] || die "token file $RAY_AUTH_TOKEN_PATH is empty: remove it to have a new token made"
    else
      # noclobber: O_EXCL, so nothing planted between the check and the write is followed.
      (umask 077 && set -C && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH") \
        || die "cannot create the token file $RAY_AUTH_TOKEN_PATH"
    fi
  fi

  start_node head --head --port "$PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" --include-dashboard true \
    --num-cpus "$HEAD_CPUS" --num-gpus 0
  deadline=$((SECONDS + START_TIMEOUT))
  # The job API is what users submit to, so "up" means it answers an authenticated request.
  until curl -sf -o /dev/null -H "Authorization: Bearer $(auth_token)" "$DASH_URL/api/version" 2>/dev/null; do
    pid_alive "$(cat "$TMP/head.pid")" || { tail -n 30 "$TMP/head.log" >&2; stop_all >&2; die "the head node exited while starting (log: $TMP/head.log)"; }
    [ $SECONDS -lt $deadline ] || { stop_all >&2; die "the head node did not come up within ${START_TIMEOUT}s (log: $TMP/head.log)"; }
    sleep 1
  done

  for ((i = 1; i <= n; i++)); do
    start_node "worker-$i" --address "$ADDRESS" \
      --num-cpus "$WORKER_CPUS" --num-gpus "$WORKER_GPUS" \
      --resources "{\"mdfr_local_worker_$i\": 1}"
  done

  alive=0
  until [ "$alive" = $((n + 1)) ]; do
    for ((i = 1; i <= n; i++)); do
      pid_alive "$(cat "$TMP/worker-$i.pid")" || { tail -n 30 "$TMP/worker-$i.log" >&2; stop_all >&2; die "worker $i exited while starting (log: $TMP/worker-$i.log)"; }
    done
    [ $SECONDS -lt $deadline ] || { stop_all >&2; die "only $alive of $((n + 1)) nodes joined within ${START_TIMEOUT}s (logs: $TMP/*.log)"; }
    sleep 1
    alive=$(count_alive_nodes || echo 0)
  done
  echo "local.sh: $((n + 1)) nodes up (the head and $n worker node(s)) under $TMP"
  print_connection
}

cmd_status() {
  local name pid up=0 down=0
  while read -r name pid; do
    if pid_alive "$pid" && our_group "$pid"; then echo "$name: running (pid $pid)"; up=$((up + 1))
    else echo "$name: not running"; down=$((down + 1)); fi
  done < <(node_pids)
  if [ $up = 0 ]; then echo "local.sh: no cluster running under $TMP"; return 1; fi
  print_connection
  [ $down = 0 ]
}

cmd_kill_worker() {
  local i=${1:-} pid
  [[ $i =~ ^[0-9]+$ ]] || die "usage: local.sh kill-worker I"
  [ -f "$TMP/worker-$i.pid" ] || die "no worker $i was started under $TMP"
  pid=$(cat "$TMP/worker-$i.pid")
  pid_alive "$pid" && our_group "$pid" || die "worker $i (pid $pid) is not running"
  # SIGKILL the whole group: raylet, object store and trial processes die at once, like a
  # machine losing power; nothing gets to shut down cleanly.
  kill -KILL -- "-$pid"
  echo "local.sh: killed worker $i (process group $pid)"
}

case "${1:-}" in
  start | stop | status | kill-worker) secure_dir "$TMP" ;;
esac
case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) stop_all ;;
  status) cmd_status ;;
  kill-worker) shift; cmd_kill_worker "$@" ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
