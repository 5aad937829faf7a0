# Tessera — build, test and run a local cluster.
# Requirements: Linux, root for the local cluster, Go 1.26. Everything else
# (containerd, runc, CNI plugins; Kubernetes components built from go.mod)
# is installed or built by these targets.

SHELL := /bin/bash
GO ?= go
BIN := bin
TOOLS := .tools
CLUSTER_DIR ?= /tmp/tessera-cluster
NODES ?= 8
# make cluster-up runs the LeaderWorkerSet controller too; LWS=false skips it.
LWS ?= true
# The real node's runtime: empty or v2 for containerd v2 built from the module proxy (CDI, the DRA path); 1.6 for Debian's.
CONTAINERD ?=
APISERVER_PORT ?= 16443
export TESSERA_CLUSTER_DIR := $(CLUSTER_DIR)

K8S_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37

# Our binaries, all static. The device plugin needs cgo (go-nvml dlopens
# libnvidia-ml.so.1 at run time), so it is linked statically against glibc
# here for the local cluster's minimal image; the Dockerfile builds it
# dynamically on a glibc base for real GPU nodes.
CMDS := $(notdir $(patsubst %/main.go,%,$(wildcard cmd/*/main.go)))
STATIC_CMDS := $(filter-out tessera-device-plugin,$(CMDS))
CGO_CMDS := $(filter tessera-device-plugin,$(CMDS))

TOOL_BINS := $(TOOLS)/etcd $(TOOLS)/kube-apiserver $(TOOLS)/kube-controller-manager \
	$(TOOLS)/kube-scheduler $(TOOLS)/kubelet $(TOOLS)/kwok $(TOOLS)/kubectl $(TOOLS)/helm \
	$(TOOLS)/kueue \
	$(TOOLS)/lws $(TOOLS)/prometheus $(TOOLS)/prometheus-adapter \
	$(TOOLS)/coredns $(TOOLS)/registry \
	$(TOOLS)/containerd $(TOOLS)/containerd-shim-runc-v2 $(TOOLS)/ctr

.PHONY: all build tools lint bench test test-unit test-repeat test-fuzz test-e2e reliability cluster-up cluster-down demo demo-model install manifests clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ $(addprefix ./cmd/,$(STATIC_CMDS))
ifneq ($(CGO_CMDS),)
	CGO_ENABLED=1 $(GO) build -trimpath -tags netgo,osusergo -ldflags "-s -w -linkmode external -extldflags -static" -o $(BIN)/ $(addprefix ./cmd/,$(CGO_CMDS))
endif

# Kubernetes components from the module graph (go.mod `tool` lines), rebuilt
# only when go.mod/go.sum change.
tools: $(TOOL_BINS)

$(TOOLS)/etcd: go.mod go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building etcd (first build of all tools takes ~8 minutes on 2 cores)"
	$(GO) build -ldflags "-s -w" -o $@ go.etcd.io/etcd/server/v3
$(TOOLS)/kwok: go.mod go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building kwok"
	$(GO) build -ldflags "-s -w" -o $@ sigs.k8s.io/kwok/cmd/kwok
# Helm from its own module (hack/tools/helm), so its graph never moves ours.
$(TOOLS)/helm: hack/tools/helm/go.mod hack/tools/helm/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building helm"
	cd hack/tools/helm && $(GO) build -ldflags "-s -w" -o $(abspath $(TOOLS))/helm helm.sh/helm/v4/cmd/helm
# Kueue from its own module (hack/tools/kueue), with its CRDs and webhook
# manifests from the same module zip (.tools/kueue-config).
$(TOOLS)/kueue: hack/tools/kueue/go.mod hack/tools/kueue/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building kueue"
	cd hack/tools/kueue && $(GO) build -ldflags "-s -w" -o $(abspath $(TOOLS))/kueue sigs.k8s.io/kueue/cmd/kueue
	@dir=$$(cd hack/tools/kueue && $(GO) list -m -f '{{.Dir}}' sigs.k8s.io/kueue) && \
	  rm -rf $(TOOLS)/kueue-config && mkdir -p $(TOOLS)/kueue-config/crds && \
	  cp $$dir/config/components/crd/bases/*.yaml $(TOOLS)/kueue-config/crds/ && \
	  cp $$dir/config/components/webhook/manifests.yaml $(TOOLS)/kueue-config/webhook.yaml && \
	  chmod -R u+w $(TOOLS)/kueue-config
# containerd v2 from its own module (hack/tools/containerd): the real node's
# runtime, with CDI for the DRA driver's claims (CONTAINERD=1.6 /
# TESSERA_CONTAINERD=1.6 runs Debian's 1.6 instead). no_btrfs: the btrfs
# snapshotter needs C headers we do not install, and the node uses overlayfs.
CONTAINERD_V2_BINS := $(TOOLS)/containerd $(TOOLS)/containerd-shim-runc-v2 $(TOOLS)/ctr
.PHONY: containerd-v2
containerd-v2: $(CONTAINERD_V2_BINS)
$(CONTAINERD_V2_BINS) &: hack/tools/containerd/go.mod hack/tools/containerd/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building containerd v2"
	cd hack/tools/containerd && CGO_ENABLED=0 $(GO) build -tags no_btrfs -ldflags "-s -w" -o $(abspath $(TOOLS))/ \
	  github.com/containerd/containerd/v2/cmd/containerd \
	  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
	  github.com/containerd/containerd/v2/cmd/ctr

# LeaderWorkerSet from its own module (hack/tools/lws), with its CRDs, webhook
# manifests and the controller's ClusterRole from the same module zip
# (.tools/lws-config). v0.9.0: the proxy lists v0.10.0 but refuses its zip.
$(TOOLS)/lws: hack/tools/lws/go.mod hack/tools/lws/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building lws"
	cd hack/tools/lws && $(GO) build -ldflags "-s -w" -o $(abspath $(TOOLS))/lws sigs.k8s.io/lws/cmd
	@dir=$$(cd hack/tools/lws && $(GO) list -m -f '{{.Dir}}' sigs.k8s.io/lws) && \
	  rm -rf $(TOOLS)/lws-config && mkdir -p $(TOOLS)/lws-config/crds && \
	  cp $$dir/config/crd/bases/*.yaml $(TOOLS)/lws-config/crds/ && \
	  cp $$dir/config/webhook/manifests.yaml $(TOOLS)/lws-config/webhook.yaml && \
	  cp $$dir/config/rbac/role.yaml $(TOOLS)/lws-config/role.yaml && \
	  chmod -R u+w $(TOOLS)/lws-config
# The custom metrics pipeline of the local cluster's autoscaling (docs/autoscaling.md):
# Prometheus and prometheus-adapter, each from its own module. Prometheus with
# its supported build tags that keep only Kubernetes service discovery (the
# other providers more than double its build time).
$(TOOLS)/prometheus: hack/tools/prometheus/go.mod hack/tools/prometheus/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building prometheus"
	cd hack/tools/prometheus && $(GO) build -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w" -o $(abspath $(TOOLS))/prometheus github.com/prometheus/prometheus/cmd/prometheus
$(TOOLS)/prometheus-adapter: hack/tools/prometheus-adapter/go.mod hack/tools/prometheus-adapter/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building prometheus-adapter"
	cd hack/tools/prometheus-adapter && $(GO) build -ldflags "-s -w" -o $(abspath $(TOOLS))/prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter
# The real node's cluster DNS and image registry (e2e/cluster/dns.go,
# registry.go): CoreDNS and CNCF Distribution, each from its own module.
$(TOOLS)/coredns: hack/tools/coredns/go.mod hack/tools/coredns/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building coredns"
	cd hack/tools/coredns && $(GO) build -ldflags "-s -w" -o $(abspath $(TOOLS))/coredns github.com/coredns/coredns
$(TOOLS)/registry: hack/tools/registry/go.mod hack/tools/registry/go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building registry"
	cd hack/tools/registry && $(GO) build -ldflags "-s -w" -o $(abspath $(TOOLS))/registry github.com/distribution/distribution/v3/cmd/registry
$(TOOLS)/%: go.mod go.sum
	@mkdir -p $(TOOLS)
	@echo ">> building $*"
	$(GO) build -ldflags "$(K8S_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/$*

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Unit and integration tests (integration tests start their own etcd and
# kube-apiserver from $(TOOLS)), bounded fuzzing, then the end-to-end tests
# on a local cluster. The reliability CI subset rides along: scheduler/chaos
# (1-minute load on 1000 simulated nodes, leader failover) in test-unit,
# FUZZTIME per fuzz target in test-fuzz, the fault, security and bad-input
# tests in test-e2e.
test: test-unit test-fuzz test-e2e

# Every fuzz target of the module for FUZZTIME each (hack/fuzz.sh).
FUZZTIME ?= 5s
RELIABILITY_OUT ?= _output/reliability
test-fuzz:
	FUZZTIME=$(FUZZTIME) FUZZ_OUT=$(RELIABILITY_OUT)/fuzz.txt GO=$(GO) ./hack/fuzz.sh

test-unit: tools
	TESSERA_TOOLS_DIR=$(abspath $(TOOLS)) $(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/e2e$$')

# test-unit N times (default 5) with a table of how often each test failed
# out of N, most failures first, and "flake.sh: N runs, X tests, Y failed at
# least once"; non-zero exit if any test failed in any run. PKGS=./gang/...
# repeats just those packages. Raw go test -json per run in
# _output/flake/run-K.json (hack/flake.sh). No fuzzing (test-fuzz).
N ?= 5
test-repeat: tools
	TESSERA_TOOLS_DIR=$(abspath $(TOOLS)) GO=$(GO) ./hack/flake.sh $(N) $(PKGS)

test-e2e: tools build
	TESSERA_TOOLS_DIR=$(abspath $(TOOLS)) TESSERA_BIN_DIR=$(abspath $(BIN)) \
		$(GO) test -count=1 -p 1 -timeout 30m -v ./e2e/

# Full reliability run (docs/reliability.md): fuzzing RELIABILITY_FUZZTIME per
# target, the load run for LOAD_DURATION on LOAD_NODES simulated nodes, leader
# failover, and the end-to-end fault, security and bad-input tests; prints
# the summary table and writes it to $(RELIABILITY_OUT)/summary.md.
RELIABILITY_FUZZTIME ?= 60s
LOAD_DURATION ?= 10m
LOAD_NODES ?= 1000
reliability: tools build
	RELIABILITY_OUT=$(RELIABILITY_OUT) FUZZTIME=$(RELIABILITY_FUZZTIME) LOAD_DURATION=$(LOAD_DURATION) \
		LOAD_NODES=$(LOAD_NODES) TOOLS_DIR=$(abspath $(TOOLS)) BIN_DIR=$(abspath $(BIN)) GO=$(GO) ./hack/reliability.sh

cluster-up: tools build
	$(BIN)/tessera-localcluster up -dir $(CLUSTER_DIR) -tools $(TOOLS) -bin $(BIN) -nodes $(NODES) -apiserver-port $(APISERVER_PORT) -lws=$(LWS) -containerd=$(CONTAINERD)

cluster-down:
	@if [ -x $(BIN)/tessera-localcluster ]; then $(BIN)/tessera-localcluster down -dir $(CLUSTER_DIR); \
	else $(GO) run ./cmd/tessera-localcluster down -dir $(CLUSTER_DIR); fi

# The main job end to end; grows with the project (see README).
demo: tools build
	./hack/demo.sh

# The demo's small model (inference/model/fortunes, served with
# --model fortunes): trained from scratch on one core by hack/train over the
# fortunes of Debian's fortunes package (apt-get install fortunes). About 20
# minutes on the 2-CPU development VM; the seed fixes the result.
demo-model:
	GOMAXPROCS=1 $(GO) run ./hack/train -seed 1 -out inference/model/fortunes

# Scheduler benchmarks (Tessera vs default kube-scheduler, native gang+TAS,
# coscheduling, Koordinator) and device-plugin benchmarks -> bench/results/<date>.md + PNGs;
# the latest table goes to bench/README.md. BENCH_MODE=quick (3 runs, target < 15 min
# on 2 cores; 13 min 37 s to 15 min 49 s measured, 19 min 51 s with the Koordinator peer on 2026-12-05
# and 21 min 11 s on 2026-12-06: missed) | full (5000 nodes, 5 runs of ~55 min) | smoke. BENCH_RUNS=N changes
# the number of runs. Not part of make test. The scheduler benchmarks need etcd; the
# preemption benchmark (step 3b) starts the integration tests' local cluster, which
# installs the LWS and Kueue CRDs with kubectl: all of the tools.
BENCH_MODE ?= quick
bench: tools
	PATH=$(abspath $(TOOLS)):$$PATH ./bench/run.sh $(BENCH_MODE)

# The documented install onto the cluster of the current kubeconfig.
install:
	kubectl apply --server-side -k manifests/

# Regenerates the PodGroup CRD from the scheduler-plugins Go types and
# refreshes the chart's copies (Helm reads nothing outside charts/tessera;
# charts/chart_test.go fails when a copy is stale).
manifests:
	$(GO) generate ./manifests/base/crds
	cp manifests/base/crds/scheduling.x-k8s.io_podgroups.yaml charts/tessera/crds/
	cp manifests/grafana/tessera-dashboard.json charts/tessera/dashboards/

clean: cluster-down
	rm -rf $(BIN)
