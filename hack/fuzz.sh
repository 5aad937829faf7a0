#!/usr/bin/env bash
# Runs every fuzz target of the module (bench/ excluded: its own engineer's)
# for FUZZTIME each and prints a table: package, target, executions, new
# corpus entries. The table is also written to $FUZZ_OUT when set.
# A failing input is written to the package's testdata/fuzz/<Target>/ by
# `go test`, so it becomes a regression seed; the script exits non-zero.
set -euo pipefail
FUZZTIME=${FUZZTIME:-5s}
GO=${GO:-go}
cd "$(dirname "$0")/.."
table=$(mktemp)
trap 'rm -f "$table"' EXIT
printf '%-36s %-28s %12s %10s %s\n' package target execs interesting result >"$table"
fail=0
while IFS= read -r file; do
  pkg=./$(dirname "$file")
  for target in $(sed -nE 's/^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\).*/\1/p' "$file"); do
    log=$(mktemp)
    ok=0
    for attempt in 1 2 3 4; do
      if $GO test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >"$log" 2>&1; then
        ok=1
        break
      fi
      # Go 1.26's fuzz coordinator can report its own -fuzztime deadline as
      # a failure (go.dev/issue/75804, fixed in Go 1.27): a bare "context
      # deadline exceeded" with no failing input written is no finding. It
      # hit twice in a row once on 2 busy cores, so up to four attempts.
      grep -q 'Failing input written' "$log" || ! grep -q 'context deadline exceeded' "$log" || continue
      break
    done
    if [ $ok = 1 ]; then
      result=ok
    else
      result=FAIL
      fail=1
      cat "$log" >&2
    fi
    last=$(grep -E '^fuzz: elapsed' "$log" | tail -1 || true)
    execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
    interesting=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
    printf '%-36s %-28s %12s %10s %s\n' "$pkg" "$target" "${execs:-0}" "${interesting:-0}" "$result" | tee -a "$table"
    rm -f "$log"
  done
done < <(git ls-files '*_test.go' | grep -v '^bench/' | xargs grep -l '^func Fuzz' | sort)
if [ -n "${FUZZ_OUT:-}" ]; then
  mkdir -p "$(dirname "$FUZZ_OUT")"
  { echo "fuzztime per target: $FUZZTIME"; cat "$table"; } >"$FUZZ_OUT"
fi
exit $fail
