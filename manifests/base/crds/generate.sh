#!/bin/sh
# Regenerates the scheduler-plugins PodGroup CRD from its Go types with
# controller-gen (a go.mod tool). Run from anywhere: `go generate ./manifests/base/crds`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go tool controller-gen crd paths=sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1 output:crd:dir="$tmp"
# Tessera adds status.conditions (GPUHealthy, written by the scheduler) to
# the generated schema: the upstream types have no conditions, and without a
# schema the API server would prune them.
awk -v cond="$here/conditions.yaml" '
  { print }
  /This data may not be up to date\./ { marker = 1; next }
  marker && /^            properties:$/ { while ((getline line < cond) > 0) print line; marker = 0 }
' "$tmp/scheduling.x-k8s.io_podgroups.yaml" > "$here/scheduling.x-k8s.io_podgroups.yaml"
