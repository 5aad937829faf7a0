#!/usr/bin/env bash
# flake.sh — repeat the unit and integration tests and count, per test, how
# often each failed.
#
#   hack/flake.sh [N] [PACKAGE PATTERN ...]      (make test-repeat N=3 [PKGS=...])
#
# Runs `go test -count=1 -json -timeout 20m` N times (default 5) over the
# packages of `make test-unit` (`go list ./... | grep -v '/e2e$'`), or over
# the package patterns given after N, relative to the repository root, e.g.
#   hack/flake.sh 10 ./gang/ ./scheduler/...
# to repeat just what you touched. Then prints a table "TEST FAILURES/RUNS"
# sorted by failures (hack/flakecount) and the line
#   flake.sh: N runs, X tests, Y failed at least once
# A package that failed with no failing test to explain it (build failure,
# panic outside a test, the -timeout panic) shows as the row "<pkg> (package)".
# Exits non-zero if any test (or package) failed in any run.
#
# Environment:
#   TESSERA_TOOLS_DIR  etcd/kube-apiserver for the integration tests
#                      (default: <repo>/.tools, as built by `make tools`)
#   FLAKE_OUT          where each run's raw go test -json goes, as run-K.json
#                      (stderr: run-K.stderr; default _output/flake, cleared
#                      of earlier runs first)
#   FLAKE_TIMEOUT      go test -timeout per run (default 20m)
#   FLAKE_ONLY_FAILED  1: print only the rows that failed at least once
#   GO                 go command (default go)
# Fuzzing is not repeated here (make test-fuzz, hack/fuzz.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
export TESSERA_TOOLS_DIR=${TESSERA_TOOLS_DIR:-$(pwd)/.tools}
out=${FLAKE_OUT:-_output/flake}
timeout=${FLAKE_TIMEOUT:-20m}

n=${1:-5}
if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
	echo "usage: $0 [N>=1] [package pattern ...]  (got N=$n)" >&2
	exit 2
fi
shift $(($# > 0 ? 1 : 0))
if (($# > 0)); then
	pkgs=("$@")
else
	mapfile -t pkgs < <("$GO" list ./... | grep -v '/e2e$')
fi

mkdir -p "$out"
rm -f "$out"/run-*.json "$out"/run-*.stderr
# Build the counter first so a broken counter fails fast, not after N runs.
counter=$out/flakecount
"$GO" build -o "$counter" ./hack/flakecount

echo "flake.sh: $n runs of ${#pkgs[@]} package pattern(s); raw output in $out/run-K.json" >&2
bad_runs=0
files=()
for ((k = 1; k <= n; k++)); do
	f=$out/run-$k.json
	files+=("$f")
	start=$SECONDS
	rc=0
	"$GO" test -count=1 -json -timeout "$timeout" "${pkgs[@]}" >"$f" 2>"$out/run-$k.stderr" || rc=$?
	status=ok
	if ((rc != 0)); then
		status="FAIL (go test exit $rc)"
		bad_runs=$((bad_runs + 1))
	fi
	echo "flake.sh: run $k/$n: $status in $((SECONDS - start))s" >&2
	if [[ -s $out/run-$k.stderr ]]; then
		echo "flake.sh: run $k stderr ($out/run-$k.stderr):" >&2
		head -n 20 "$out/run-$k.stderr" | sed 's/^/  /' >&2
	fi
done

count_args=(-trim "$("$GO" list -m)/")
if [[ ${FLAKE_ONLY_FAILED:-0} == 1 ]]; then
	count_args+=(-failed)
fi
rc=0
"$counter" "${count_args[@]}" "${files[@]}" || rc=$?
if ((rc > 1)); then
	echo "flake.sh: flakecount failed (exit $rc)" >&2
	exit "$rc"
fi
if ((rc != 0 || bad_runs != 0)); then
	if ((rc == 0)); then
		# go test failed without a failing test in its JSON (a bad pattern, go list errors): see the stderr files.
		echo "flake.sh: $bad_runs run(s) exited non-zero with no failing test recorded; see $out/run-K.stderr" >&2
	fi
	exit 1
fi
