// Package grafana embeds Tessera's Grafana dashboard, so tools can install
// exactly the file shipped here. The dashboard reads the Prometheus metrics
// of tessera-scheduler (scheduler/metrics.go), tessera-device-plugin
// (deviceplugin/metrics.go) and tessera-shard-server
// (inference/server/metrics.go); the test keeps it in step with them.
package grafana

import _ "embed"

// Dashboard is tessera-dashboard.json.
//
//go:embed tessera-dashboard.json
var Dashboard []byte
