#!/usr/bin/env bash
# openai-client-check.sh — the official `openai` npm client (pinned in
# hack/openai-client/package.json) against a 2-rank tessera-shard-server on
# loopback: completions and chat, whole and streamed, seeded reproducibility,
# an error naming its param. Needs Node.js >= 18, python3 (to find free
# ports) and the npm registry; not
# part of make test (it downloads the client). openai 7.x needs Node.js 22,
# so the pin is the newest 6.x.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
work=$(mktemp -d /tmp/tessera-openai-check.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
http=$(free_port); coll=$(free_port)

CGO_ENABLED=0 $GO build -o "$work/tessera-shard-server" ./cmd/tessera-shard-server
# The demo model, so the answers are words and a sampled first token is
# rarely the end of text (a random-weight model ends at once for some seeds).
"$work/tessera-shard-server" --rank 0 --world-size 2 --model fortunes --listen "127.0.0.1:$http" \
  --collective-listen "127.0.0.1:$coll" --collective-busy-poll 0 >"$work/rank0.log" 2>&1 &
pids+=($!)
"$work/tessera-shard-server" --rank 1 --world-size 2 --model fortunes --leader-addr "127.0.0.1:$coll" --listen "" \
  --collective-busy-poll 0 >"$work/rank1.log" 2>&1 &
pids+=($!)

# Ready once both ranks joined and the warm-up step passed (bounded: 120 x 0.5 s).
for _ in $(seq 120); do
  if curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.5
done
if [ -z "${ready:-}" ]; then
  echo "shard server not ready; logs:" >&2; tail -20 "$work"/rank*.log >&2; exit 1
fi

(cd hack/openai-client && npm ci --no-audit --no-fund --silent)
node hack/openai-client/check.mjs "http://127.0.0.1:$http/v1"
