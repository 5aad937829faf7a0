#!/bin/sh
# Regenerates the scheduler-plugins PodGroup CRD from its Go types with
# controller-gen (a go.mod tool). Run from anywhere: `go generate ./manifests/base/crds`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go tool controller-gen crd paths=sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1 output:crd:dir="$tmp"
cp "$tmp/scheduling.x-k8s.io_podgroups.yaml" "$here/"
