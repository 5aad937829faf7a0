#!/usr/bin/env bash
# make demo: Tessera's main job end to end on the local cluster. Each step
# says what it does; a failure names the step and where its log is.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
TOOLS=${TOOLS:-.tools}
CLUSTER_DIR=${TESSERA_CLUSTER_DIR:-/tmp/tessera-cluster}
OUT_DIR=${OUT_DIR:-_output/demo}
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
kubectl() { "$TOOLS/kubectl" "$@"; }
mkdir -p "$OUT_DIR"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "demo failed at step: $1 (cluster logs: $CLUSTER_DIR/logs)" >&2; exit 1; }

step "1/7 local cluster: 1 real node (containerd + kubelet) + 16 simulated 8-GPU nodes in 4 cliques"
"$BIN/tessera-localcluster" down -dir "$CLUSTER_DIR" >/dev/null || fail "cleaning up the previous cluster"
"$BIN/tessera-localcluster" up -dir "$CLUSTER_DIR" -tools "$TOOLS" -bin "$BIN" \
  -nodes 16 -nodes-per-clique 4 -cliques-per-rack 2 -gpus 8 -slices-per-gpu 4 || fail "cluster up"

step "2/7 install Tessera from manifests/ (overlay manifests/overlays/local: mock GPUs on the real node)"
"$BIN/tessera-localcluster" install -dir "$CLUSTER_DIR" -tools "$TOOLS" -overlay manifests/overlays/local || fail "install"
kubectl get pods -n tessera-system -o wide

step "3/7 workloads: fractional pods, two TP gangs on simulated nodes, a 2-rank shard-server gang on the real node"
"$BIN/tessera-demo" || fail "workloads"

step "4/7 placement map (kubectl tessera nodes / gangs)"
"$BIN/kubectl-tessera" nodes --svg "$OUT_DIR/placement.svg" || fail "placement map"
"$BIN/kubectl-tessera" gangs -n tessera-demo || fail "gang status"
echo "picture of the map: $OUT_DIR/placement.svg"

step "5/7 LeaderWorkerSet groups scaling: simulated 4-rank groups 2 -> 5 -> 2; real shard-server groups 1 -> 2 -> 1 by an HPA on requests in flight (Prometheus + prometheus-adapter)"
TESSERA_TOOLS_DIR="$PWD/$TOOLS" "$BIN/tessera-demo" -autoscale -cluster-dir "$CLUSTER_DIR" || fail "autoscaling"
kubectl get lws,hpa -n tessera-demo-lws

step "6/7 DRA: the real node's agent becomes DRA driver gpu.tessera.dev; a pod with a claim from manifests/examples/dra-claims.yaml (tp-rank-2-slices) gets exactly the slices Tessera planned"
TESSERA_TOOLS_DIR="$PWD/$TOOLS" "$BIN/tessera-demo" -dra -cluster-dir "$CLUSTER_DIR" || fail "DRA"
kubectl get resourceclaims -n tessera-demo-dra -o wide

step "7/7 the cluster keeps running"
cat <<EOT
  export KUBECONFIG=$KUBECONFIG
  export PATH=\$PWD/$TOOLS:\$PWD/$BIN:\$PATH     # kubectl and kubectl-tessera
  kubectl get pods -n tessera-demo -o wide
  kubectl tessera nodes            # slices per node and GPU
  kubectl tessera gangs -A         # gangs, their domain and status
  kubectl get pg -n tessera-demo   # PodGroups (scheduling.x-k8s.io; bare "podgroups" is the native kind)
  kubectl tessera explain -n tessera-demo llama-tp4-0
  kubectl get resourceslices,resourceclaims -A   # the real node's GPUs through DRA
  curl -s localhost:18000/v1/completions -d '{"prompt":"Love is","max_tokens":32,"temperature":0}'
Stop it: make cluster-down
EOT
