#!/usr/bin/env bash
# A Ray cluster started by hand on machines that already have bigscene installed and share the workspace.
#
#   head:     launch/ray_start.sh head
#   workers:  launch/ray_start.sh worker HEAD_IP
#   then, on any node:
#             bigscene partition -w /shared/ws --address HEAD_IP:6379
#             bigscene train -w /shared/ws --address HEAD_IP:6379
#   finally, on every node: ray stop
#
# Ray counts each node's GPUs itself; bigscene gives each block train.gpus_per_block of them (default 1).
set -euo pipefail
PORT=${RAY_PORT:-6379}

case "${1:-}" in
  head)
    ray start --head --port="$PORT" --include-dashboard=false
    echo "head ready: workers join with '$0 worker $(hostname -I | awk '{print $1}')'"
    ;;
  worker)
    ray start --address="${2:?usage: $0 worker HEAD_IP}:$PORT"
    ;;
  *)
    echo "usage: $0 head | worker HEAD_IP" >&2
    exit 2
    ;;
esac
