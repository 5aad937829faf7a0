// Package crds embeds the CustomResourceDefinitions Tessera installs, so tests
// and tools apply exactly the files shipped in manifests/base/crds.
//
// The PodGroup CRD is generated from the scheduler-plugins Go types plus
// Tessera's status.conditions (conditions.yaml), never hand-edited;
// regenerate with `go generate ./manifests/base/crds`.
package crds

import _ "embed"

//go:generate sh generate.sh

// PodGroups is the scheduling.x-k8s.io/v1alpha1 PodGroup CRD (YAML).
//
//go:embed scheduling.x-k8s.io_podgroups.yaml
var PodGroups []byte
