// Code generated from bench/scheduler/apiwrites_test.go by bench/run.sh; DO NOT EDIT.

package baseline

import (
	"fmt"

	"k8s.io/component-base/metrics/legacyregistry"
)

// writeVerbs are apiserver_request_total's verbs that change state.
var writeVerbs = map[string]bool{"POST": true, "PUT": true, "PATCH": true, "APPLY": true, "DELETE": true, "DELETECOLLECTION": true}

// apiWrites counts the write requests the API server in this process has
// served so far, by "VERB resource[/subresource]" (apiserver_request_total,
// every response code). scheduler_perf runs the API server in the
// benchmark's own process and its workloads one after the other, so the
// difference of two counts is what one workload cost the API server:
// the workload's creates, the scheduler's Bindings, status patches and
// events, and the API server's own lease renewals.
func apiWrites() (map[string]int, error) {
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		return nil, fmt.Errorf("gathering apiserver_request_total: %w", err)
	}
	out := map[string]int{}
	for _, mf := range mfs {
		if mf.GetName() != "apiserver_request_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if !writeVerbs[l["verb"]] {
				continue
			}
			key := l["verb"] + " " + l["resource"]
			if l["subresource"] != "" {
				key += "/" + l["subresource"]
			}
			out[key] += int(m.GetCounter().GetValue())
		}
	}
	return out, nil
}

// writesSince is after minus before, keys with no new writes left out.
func writesSince(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}
