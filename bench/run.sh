#!/usr/bin/env bash
# bench/run.sh [quick|full|smoke] — the scheduler benchmark behind `make bench`.
#
#   1. bench/scheduler (root module, Kubernetes 1.37.2 scheduler_perf):
#      Tessera and its 1.37 baselines, one `go test -bench` invocation;
#   2. bench/baseline (own module, Kubernetes 1.34.4): scheduler-plugins
#      coscheduling v0.34.7 on the same shapes;
#      2c. bench/koordinator (own module, Kubernetes 1.28.7): the GPU mix
#      against Koordinator v1.7.0's koord-scheduler, the fractional peer;
#   3. bench/deviceplugin: Allocate / GetPreferredAllocation latency;
#      3b. preemption at saturation: time to place a high-priority gang on a
#      full clique and victims per preemption (scheduler/integration, real
#      API server and controllers, simulated nodes);
#   4. bench/scheduler/report: bench/results/<date>.md + PNGs, and the latest
#      table in bench/README.md.
#
# Needs etcd on PATH and the rest of .tools for step 3b's local cluster:
# `make tools` builds them (`make bench` does).
# quick: 500 nodes; GPU mix 64 nodes x 8 GPUs (128 until 2026-12-06), 3 runs,
# target < 15 min on 2 cores: 12 min 25 s on 2026-12-06 (36 s building every
# binary, about 3 min 50 s a run; 21 min 11 s earlier that day with the GPU mix
# at 128 nodes, a fixed 10 s settle and the binaries built one after another).
# full: 5000 nodes; GPU mix 1000 nodes x 8 GPUs, 5 runs (about 55 min each on 2
# cores: 42 min on 2026-12-04 with the DRA row cut at 10 min, which takes 25
# whole; Koordinator's GPU mix adds about 13 min; 16+ GiB RAM). smoke: seconds
# per workload, 1 run.
#
# BENCH_RUNS=N (default 3 quick, 5 full, 1 smoke) repeats steps 1, 2 and 2c N
# times, Tessera and baselines interleaved run by run; the report shows the
# median and min-max of every ratio. Both benchmark binaries are built once
# and run N times.
#
# BENCH_FILTER='PerfScheduling/(TAS|GPUMix)_' runs only the matching test
# cases (a go test -bench pattern, used in both modules); a filtered run
# leaves bench/README.md alone. BENCH_NAME=<name> writes
# bench/results/<name>.md (full mode: bench/results/full/<name>.md) instead
# of <date>.md and refuses to overwrite it; <name> is a file name, no '/'.
set -uo pipefail
MODE=${1:-${BENCH_MODE:-quick}}
case $MODE in quick|full|smoke) ;; *) echo "usage: $0 [quick|full|smoke]" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GO=${GO:-go}
export PATH="$ROOT/.tools:$PATH"
if ! command -v etcd >/dev/null; then echo "etcd not found: run 'make tools' first" >&2; exit 1; fi
# Step 3b (preemption) runs the integration tests' local cluster from
# .tools (binaries, and the LWS and Kueue CRDs kubectl installs): say so
# before the runs, not after them.
for t in kube-apiserver kube-controller-manager kwok kubectl lws-config kueue-config; do
  [ -e "$ROOT/.tools/$t" ] || { echo ".tools/$t not found (the preemption benchmark needs it): run 'make tools' first" >&2; exit 1; }
done
# The name is a file name inside the results folder (full mode already writes
# to bench/results/full/): refuse a path before hours of runs, not after.
case ${BENCH_NAME:-} in */*) echo "BENCH_NAME=$BENCH_NAME: a file name, not a path (full mode writes to bench/results/full/ itself)" >&2; exit 2 ;; esac

WORK=$(mktemp -d /tmp/tessera-bench.XXXXXX)
NOTES=$WORK/notes.md
: >"$NOTES"
TIMEOUT=${BENCH_TIMEOUT:-120m}
FILTER=${BENCH_FILTER:-.}
echo ">> work dir $WORK"

# The baseline and Koordinator modules carry a copy of record.go (they cannot
# import the root module: different Kubernetes versions).
for m in baseline koordinator; do
{ echo "// Code generated from bench/scheduler/record.go by bench/run.sh; DO NOT EDIT."; echo
  sed -e "s/^package scheduler_bench/package $m/" -e '/^\/\/ Package scheduler_bench/,/^\/\/ bench\/results.*$/d' bench/scheduler/record.go
} >bench/$m/record.go.new && mv bench/$m/record.go.new bench/$m/record.go
done

# BENCH_RUNS=N repeats steps 1, 2 and 2c, Tessera and baselines interleaved run
# by run; the report shows each row's median run and a spread section
# (median and min-max of every throughput and within-run ratio).
case $MODE in quick) RUNS=3 ;; full) RUNS=5 ;; smoke) RUNS=1 ;; esac
RUNS=${BENCH_RUNS:-$RUNS}
stamp() { echo ">> $(date +%T) $*"; }
# verdict LOG: what a failed benchmark run says for the notes, fenced:
# scheduler_perf's own verdict (the line after FATAL ERROR names the workload
# and the op that failed; the last lines of the log without one), then the
# failing tests.
verdict() {
  echo '```'
  grep -A1 'FATAL ERROR' "$1" | grep -v -- '^--$' || tail -5 "$1"
  grep -E -- '^--- FAIL' "$1"
  echo '```'
}
# probe_peers asks the Go module proxy for the fractional peers issue 20
# names (KAI-Scheduler, HAMi), writing $WORK/peers.md. The proxy has refused
# every version asked so far, so Koordinator (step 2c, served) is the
# fractional row. Each run asks again for the versions below and writes what
# the proxy answered into the results: a peer that cannot be fetched is
# reported with its exact error, never estimated.
PEERS="github.com/NVIDIA/KAI-scheduler@v0.10.2 github.com/NVIDIA/KAI-scheduler@v0.9.3 github.com/NVIDIA/KAI-scheduler@v0.8.5 github.com/NVIDIA/KAI-scheduler@v0.5.0 github.com/Project-HAMi/HAMi@v2.7.0+incompatible github.com/Project-HAMi/HAMi@v2.6.0+incompatible github.com/Project-HAMi/HAMi@v2.5.0+incompatible"
probe_peers() {
  local peerdir out err m
  peerdir=$(mktemp -d "$WORK/peers.XXXX")
  (cd "$peerdir" && $GO mod init tessera-bench-peers >/dev/null 2>&1)
  { echo "Fractional peers named by issue 20 for the GPU mix (KAI-Scheduler, HAMi): each version asked of the Go module proxy in this run:"; echo
    for m in $PEERS; do
      out=$(cd "$peerdir" && $GO mod download -json "$m" 2>&1)
      err=$(printf '%s' "$out" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' | sed 's/\\n\\t/ /g' | head -1)
      if [ -n "$err" ]; then echo "- \`$m\`: refused: \`$err\`"; else echo "- \`$m\`: downloaded, but no harness runs it yet: no figures"; fi
    done
    echo
  } >"$WORK/peers.md"
}

# Build every binary the steps run once, before the runs: the three
# benchmark binaries (each run starts them in their package directory, where
# performance-config.yaml and its templates are), koord-scheduler, the
# preemption benchmark, the device-plugin benchmark and the report. Two
# chains link side by side (a link keeps about one of the two cores busy);
# -s -w leaves out the symbol table and DWARF, which nothing here reads
# (stack traces and profiles use the pc-line table, which stays), and cuts
# each link by about a third. Nothing is measured while they build.
BFLAGS=(-test.run '^$' -test.bench "$FILTER" -test.benchtime 1x -test.timeout "$TIMEOUT" -perf-scheduling-label-filter="$MODE")
LDFLAGS=(-ldflags='-s -w')
stamp "building the benchmark binaries, koord-scheduler and the report"
# The fractional peers' answers do not depend on this machine's cores: ask
# the proxy while the binaries link (peers.md, appended to the notes below).
probe_peers &
PEERS_PID=$!
# bench/scheduler, bench/baseline and the report in the background, the rest
# in the foreground.
( (cd bench/scheduler && $GO test -c "${LDFLAGS[@]}" -o "$WORK/scheduler.test" .) && \
  (cd bench/baseline && $GO test -c "${LDFLAGS[@]}" -o "$WORK/baseline.test" .) && \
  $GO build -o "$WORK/report" ./bench/scheduler/report ) >"$WORK/build.log" 2>&1 &
MAIN_BUILD=$!
# The fractional peer, Koordinator v1.7.0 (own module, Kubernetes 1.28.7):
# its harness and the koord-scheduler binary it runs. A build failure is
# written into the results, not hidden: the other rows still run.
KOORD=1
if ! { (cd bench/koordinator && $GO test -c "${LDFLAGS[@]}" -o "$WORK/koordinator.test" . && \
        $GO build "${LDFLAGS[@]}" -o "$WORK/koord-scheduler" github.com/koordinator-sh/koordinator/cmd/koord-scheduler) >"$WORK/koord-build.log" 2>&1; }; then
  KOORD=0
  { echo "bench/koordinator (Koordinator v1.7.0) did not build; no Koordinator rows. Last lines:"; echo '```'; tail -5 "$WORK/koord-build.log"; echo '```'; } >>"$NOTES"
fi
# Steps 3 and 3b: a build failure is reported by the step that needed it.
$GO test -c "${LDFLAGS[@]}" -o "$WORK/deviceplugin.test" ./bench/deviceplugin >"$WORK/build-deviceplugin.log" 2>&1
$GO test -c "${LDFLAGS[@]}" -o "$WORK/integration.test" ./scheduler/integration >"$WORK/build-integration.log" 2>&1
wait $MAIN_BUILD || { cat "$WORK/build.log"; kill $PEERS_PID 2>/dev/null; exit 1; }
stamp "built"
RUNDIRS=""
for k in $(seq 1 "$RUNS"); do
R=$WORK/run$k
RUNDIRS="$RUNDIRS${RUNDIRS:+,}$R"
stamp "[1/4] bench/scheduler ($MODE, run $k of $RUNS): Tessera vs default kube-scheduler / native gang+TAS 1.37"
mkdir -p "$R/tessera"
(cd bench/scheduler && "$WORK/scheduler.test" "${BFLAGS[@]}" -tessera-records "$R/tessera/records.jsonl" \
    -data-items-dir "$R/tessera") >"$R/tessera.log" 2>&1
rc=$?
grep -E '^(Benchmark|--- (FAIL|SKIP)|FAIL|ok)' "$R/tessera.log" | cut -c1-160
if [ $rc -ne 0 ]; then
  { echo "bench/scheduler (run $k) exited with $rc:"; verdict "$R/tessera.log"; } >>"$NOTES"
fi

stamp "[2/4] bench/baseline ($MODE, run $k of $RUNS): scheduler-plugins coscheduling v0.34.7 on Kubernetes 1.34.4"
mkdir -p "$R/baseline"
(cd bench/baseline && "$WORK/baseline.test" "${BFLAGS[@]}" -tessera-records "$R/baseline/records.jsonl" \
    -data-items-dir "$R/baseline") >"$R/baseline.log" 2>&1
rc=$?
grep -E '^(Benchmark|--- (FAIL|SKIP)|FAIL|ok)' "$R/baseline.log" | cut -c1-160
# scheduler_perf's goroutine-leak check fails every coscheduling workload
# (its go-cache janitor is never stopped); that alone is not a failed run.
fails=$(grep -cE -- '^--- FAIL: BenchmarkPerfScheduling/[^/]+/[^/ ]+$' "$R/baseline.log")
leaks=$(grep -c 'found unexpected goroutines' "$R/baseline.log")
if [ $rc -ne 0 ] && [ -s "$R/baseline/records.jsonl" ] && [ "$fails" -le "$leaks" ]; then
  [ "$k" = 1 ] && echo "bench/baseline: scheduler_perf's goroutine-leak check marks the coscheduling benchmarks FAIL (coscheduling v0.34.7 starts a github.com/patrickmn/go-cache janitor goroutine that is never stopped); the workloads themselves completed and their figures are above." >>"$NOTES"
elif [ $rc -ne 0 ]; then
  { echo "bench/baseline (coscheduling v0.34.7, Kubernetes 1.34.4; run $k) exited with $rc; no coscheduling figures where rows are missing:"; verdict "$R/baseline.log"; } >>"$NOTES"
fi

if [ "$KOORD" = 1 ]; then
stamp "[2c/4] bench/koordinator ($MODE, run $k of $RUNS): Koordinator v1.7.0 koord-scheduler on Kubernetes 1.28.7, the GPU mix"
mkdir -p "$R/koordinator"
(cd bench/koordinator && "$WORK/koordinator.test" -test.run '^$' -test.bench "$FILTER" -test.benchtime 1x -test.timeout "$TIMEOUT" \
    -size "$MODE" -koord-scheduler "$WORK/koord-scheduler" -log-dir "$R/koordinator" \
    -tessera-records "$R/koordinator/records.jsonl") >"$R/koordinator.log" 2>&1
rc=$?
grep -E '^(Benchmark|--- (FAIL|SKIP)|FAIL|ok)' "$R/koordinator.log" | cut -c1-160
if [ $rc -ne 0 ]; then
  { echo "bench/koordinator (Koordinator v1.7.0, Kubernetes 1.28.7; run $k) exited with $rc; last lines:"; echo '```'; grep -E -- '--- FAIL|_test.go:[0-9]+:|koord-scheduler' "$R/koordinator.log" | tail -8 | cut -c1-300; echo '```'; } >>"$NOTES"
fi
fi
done

stamp "[2b/4] the other fractional peers (KAI-Scheduler, HAMi) from the Go module proxy (asked while the binaries built)"
wait $PEERS_PID
{ if [ "$KOORD" = 1 ]; then echo "No KAI-Scheduler or HAMi row is in the tables; the fractional peer measured is Koordinator v1.7.0 (bench/koordinator)."
  else echo "No fractional peer row is in the tables (bench/koordinator did not build, above)."; fi
} >>"$WORK/peers.md"
grep -E '^- `' "$WORK/peers.md" | cut -c1-160
cat "$WORK/peers.md" >>"$NOTES"

stamp "[3/4] bench/deviceplugin"
DPN=2000; [ "$MODE" = smoke ] && DPN=200
if [ -x "$WORK/deviceplugin.test" ]; then
  (cd bench/deviceplugin && "$WORK/deviceplugin.test" -test.run '^$' -test.bench . -test.benchtime ${DPN}x) >"$WORK/deviceplugin.txt" 2>&1 || \
    echo "bench/deviceplugin failed, see its output" >>"$NOTES"
else
  cp "$WORK/build-deviceplugin.log" "$WORK/deviceplugin.txt"
  { echo "bench/deviceplugin did not build; last lines:"; echo '```'; tail -5 "$WORK/build-deviceplugin.log"; echo '```'; } >>"$NOTES"
fi

stamp "[3b/4] preemption at saturation (real API server, simulated nodes)"
PRN=5; [ "$MODE" = full ] && PRN=10; [ "$MODE" = smoke ] && PRN=1
# In its package directory, as go test runs it (it reads ../../manifests).
if [ -x "$WORK/integration.test" ]; then
  (cd scheduler/integration && TESSERA_TOOLS_DIR="$ROOT/.tools" "$WORK/integration.test" -test.run '^$' -test.bench PreemptionAtSaturation \
      -test.benchtime ${PRN}x -test.timeout 30m) >"$WORK/preemption.txt" 2>"$WORK/preemption.log" || \
    { echo "the preemption benchmark failed; last lines:"; echo '```'; cat "$WORK/preemption.txt" "$WORK/preemption.log" | grep -E -- '--- FAIL|_test.go:[0-9]+:' | tail -10; echo '```'; } >>"$NOTES"
else
  : >"$WORK/preemption.txt"
  { echo "the preemption benchmark did not build; last lines:"; echo '```'; tail -5 "$WORK/build-integration.log"; echo '```'; } >>"$NOTES"
fi
grep -E '^BenchmarkPreemption' "$WORK/preemption.txt" | cut -c1-200

stamp "[4/4] report"
# The notes go into a committed results file: log excerpts must not carry
# this machine's paths.
sed -i -e "s|$($GO env GOMODCACHE)|\$GOMODCACHE|g" -e "s|$ROOT|<repo>|g" -e "s|$WORK|<work dir>|g" -e "s|$HOME|~|g" "$NOTES"
MACHINE="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr), $($GO version | cut -d' ' -f3)"
# Full-size runs go to bench/results/full/ and leave bench/README.md's
# latest table (the quick run's) alone.
OUTDIR=bench/results; [ "$MODE" = full ] && OUTDIR=bench/results/full
OUTDIR=${BENCH_RESULTS:-$OUTDIR}
README=bench/README.md
[ "$MODE" = smoke ] && README=""
[ "$MODE" = full ] && README=""
[ "$FILTER" != . ] && README=""
"$WORK/report" -mode "$MODE" -machine "$MACHINE" -name "${BENCH_NAME:-}" \
  -runs "$RUNDIRS" -deviceplugin "$WORK/deviceplugin.txt" \
  -preemption "$WORK/preemption.txt" \
  -notes "$NOTES" -out "$OUTDIR" -readme "$README"
stamp "done; logs in $WORK"
