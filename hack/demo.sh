#!/usr/bin/env bash
# make demo: the main job end to end on the local cluster. Each step prints
# what it does; a failure names the step and its log.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
TOOLS=${TOOLS:-.tools}
CLUSTER_DIR=${TESSERA_CLUSTER_DIR:-/tmp/tessera-cluster}
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
kubectl() { "$TOOLS/kubectl" "$@"; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "demo failed at step: $1 (logs: $CLUSTER_DIR/logs)" >&2; exit 1; }

step "1/3 starting the local cluster (1 real node + 16 simulated 8-GPU nodes in 4 cliques)"
"$BIN/tessera-localcluster" down -dir "$CLUSTER_DIR" >/dev/null
"$BIN/tessera-localcluster" up -dir "$CLUSTER_DIR" -tools "$TOOLS" -bin "$BIN" \
  -nodes 16 -nodes-per-clique 4 -cliques-per-rack 2 -gpus 8 -slices-per-gpu 4 || fail "cluster up"

step "2/3 nodes and their topology"
kubectl get nodes -L nvidia.com/gpu.clique,topology.kubernetes.io/rack,tessera.dev/gpu.count || fail "list nodes"

step "3/3 a pod from our own image on the real node"
kubectl delete pod tessera-demo-probe --ignore-not-found >/dev/null
kubectl run tessera-demo-probe --image=localhost/tessera/e2e-probe:dev --image-pull-policy=Never \
  --restart=Never --overrides='{"spec":{"nodeSelector":{"tessera.dev/real-node":"true"}}}' >/dev/null || fail "create probe pod"
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded pod/tessera-demo-probe --timeout=120s >/dev/null || fail "probe pod"
kubectl logs tessera-demo-probe

cat <<EOT

The cluster keeps running.
  export KUBECONFIG=$KUBECONFIG
  kubectl get nodes,pods -A
Stop it with: make cluster-down
EOT
