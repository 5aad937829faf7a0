#!/usr/bin/env bash
# make reliability: runs the reliability suite in full mode and writes the
# summary table (docs/reliability.md explains each row).
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
out=$(realpath -m "${RELIABILITY_OUT:-_output/reliability}")
mkdir -p "$out"
figures=$out/figures.txt
rm -f "$figures"
status=0
step() { echo ">> $*"; }

step "fuzzing every target for ${FUZZTIME:-60s}"
FUZZTIME=${FUZZTIME:-60s} FUZZ_OUT=$out/fuzz.txt GO=$GO ./hack/fuzz.sh || status=1

step "load (${LOAD_DURATION:-10m} on ${LOAD_NODES:-1000} simulated nodes) and leader failover"
TESSERA_TOOLS_DIR=$TOOLS_DIR TESSERA_RELIABILITY_OUT=$figures TESSERA_LOAD_DURATION=${LOAD_DURATION:-10m} \
  TESSERA_LOAD_NODES=${LOAD_NODES:-1000} TESSERA_LOAD_PROFILE_DIR=$out $GO test -count=1 -timeout 60m -v ./scheduler/chaos/ 2>&1 | tee "$out/chaos.log" | grep -E '^(=== RUN|--- |ok|FAIL)|FIGURE' || true
grep -q '^ok' "$out/chaos.log" || status=1

step "scheduler restart mid-gang (integration)"
TESSERA_TOOLS_DIR=$TOOLS_DIR $GO test -count=1 -timeout 20m -run 'TestRestartMidGang|TestBadArgsFailAtStart' -v ./scheduler/integration/ 2>&1 \
  | tee "$out/integration.log" | grep -E '^(--- |ok|FAIL)' || true
grep -q '^ok' "$out/integration.log" || status=1

step "end-to-end faults, security and bad input on the local cluster"
TESSERA_TOOLS_DIR=$TOOLS_DIR TESSERA_BIN_DIR=$BIN_DIR TESSERA_RELIABILITY_OUT=$figures \
  $GO test -count=1 -p 1 -timeout 30m -v -run 'TestFault|TestRBAC|TestDevicePluginConfined|TestContainersHardened|TestBadInput' ./e2e/ 2>&1 \
  | tee "$out/e2e.log" | grep -E '^(--- |ok|FAIL)|FIGURE' || true
grep -q '^ok' "$out/e2e.log" || status=1

{
  echo "# Tessera reliability run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| figure | value | unit |"
  echo "|---|---:|---|"
  sort "$figures" 2>/dev/null | awk '{printf "| %s | %s | %s |\n", $1, $2, $3}'
  echo
  echo '```'
  cat "$out/fuzz.txt" 2>/dev/null
  echo '```'
  echo
  if [ $status -eq 0 ]; then echo "All reliability tests passed."; else echo "FAILURES: see $out/*.log"; fi
} >"$out/summary.md"
cat "$out/summary.md"
exit $status
