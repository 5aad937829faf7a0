#!/usr/bin/env bash
# gpu-check.sh — check the device plugin against a real NVIDIA GPU, without a
# cluster or kubelet, and write one JSON report. CI and dev machines have no
# GPU: there the script fails at once with a clear message (or use
# GPU_CHECK_FAKE to exercise it on fake GPUs).
#
# Steps (each with status ok|error, durationSeconds, output lines and for some
# a "result" object in the report; status skipped with a reason when not run):
#   preflight      libnvidia-ml.so.1 present (ldconfig, LD_LIBRARY_PATH, the
#                  usual driver paths), /dev/nvidia* nodes, nvidia-smi -L, glibc
#   build          CGO_ENABLED=1 go build ./cmd/tessera-device-plugin, or the
#                  prebuilt binary of GPU_CHECK_BIN
#   discover       `tessera-device-plugin discover`: NVML discovery, one health
#                  probe per GPU, Xid registration (the table it prints)
#   inventory      the inventory the plugin would publish (discover --json;
#                  "result" holds it, discover.json the whole discovery)
#   health_watch   Xid event watch for GPU_CHECK_HEALTH_SECONDS (default 30)
#                  on every GPU: "result" holds per-GPU health and the Xid
#                  registrations, errors and events
#   mps            is an MPS control daemon running, is its pipe directory
#                  (control pipe) present, compute modes (informational)
#   mig            MIG mode per GPU from NVML, and from nvidia-smi if present
#   realnvml_test  optional: the compiled deviceplugin test binary's
#                  TestRealNVMLWithKubelet (real NVML against the in-process
#                  kubelet device manager), when GPU_CHECK_TEST_BIN is set
# The report is ${GPU_CHECK_OUT:-_output/gpu-check}/report.json; exit status 0
# when every step that ran is ok. With a prebuilt binary it takes about
# GPU_CHECK_HEALTH_SECONDS + 20 s (+ up to 2 min for the optional test).
#
# Usual use: the GPU machine has no Go toolchain, so build here, carry the
# binaries, run there:
#   mkdir -p _output/gpu-bin
#   CGO_ENABLED=1 go build -ldflags "-s -w" -o _output/gpu-bin/tessera-device-plugin ./cmd/tessera-device-plugin
#   go test -c -ldflags "-s -w" -o _output/gpu-bin/deviceplugin.test ./deviceplugin/    # optional
#   gzip -9f _output/gpu-bin/*     # 60 + 81 MiB -> about 16 + 20 MiB to carry
#   # on the GPU machine, from the repository root (glibc >= 2.34 there):
#   GPU_CHECK_BIN=_output/gpu-bin/tessera-device-plugin.gz \
#     GPU_CHECK_TEST_BIN=_output/gpu-bin/deviceplugin.test.gz hack/gpu-check.sh
# Without GPU_CHECK_BIN the script builds the binary itself (needs Go and a C
# compiler; the build may take minutes and does not count in the 3 minutes).
#
# Environment:
#   GPU_CHECK_BIN             prebuilt tessera-device-plugin (skips the build); a
#                             name ending in .gz is unpacked into GPU_CHECK_OUT first
#   GPU_CHECK_TEST_BIN        prebuilt `go test -c ./deviceplugin/` binary, or .gz
#                             (the optional realnvml_test step)
#   GPU_CHECK_OUT             report directory (default _output/gpu-check)
#   GPU_CHECK_HEALTH_SECONDS  Xid watch length, 1..120 (default 30)
#   GPU_CHECK_FAKE            fake GPUs instead of NVML, a --fake-gpus spec such
#                             as 4xH100-80GB (tests the script without a GPU)
#   GPU_CHECK_NVML_LIB        path of libnvidia-ml.so.1 when not on the loader path
#   GPU_CHECK_MPS_PIPE_DIR    MPS pipe directory to look at (default the plugin's
#                             --mps-pipe-dir, /run/nvidia/mps; $CUDA_MPS_PIPE_DIRECTORY
#                             and /tmp/nvidia-mps are looked at too)
set -euo pipefail

orig=$(pwd)
abs() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s' "$orig/$1" ;; esac; }
bin=${GPU_CHECK_BIN:+$(abs "$GPU_CHECK_BIN")}
testbin=${GPU_CHECK_TEST_BIN:+$(abs "$GPU_CHECK_TEST_BIN")}
nvml_lib=${GPU_CHECK_NVML_LIB:+$(abs "$GPU_CHECK_NVML_LIB")}
out=${GPU_CHECK_OUT:+$(abs "$GPU_CHECK_OUT")}
cd "$(dirname "$0")/.."
out=${out:-$(pwd)/_output/gpu-check}
health_s=${GPU_CHECK_HEALTH_SECONDS:-30}
fake=${GPU_CHECK_FAKE:-}
GO=${GO:-go}
lib="" # libnvidia-ml.so.1 found by the preflight

if ! [[ $health_s =~ ^[0-9]+$ ]] || ((health_s < 1 || health_s > 120)); then
	echo "gpu-check: GPU_CHECK_HEALTH_SECONDS=$health_s: want an integer in 1..120" >&2
	exit 2
fi
mkdir -p "$out"
rm -f "$out"/report.json "$out"/discover.json "$out"/health-watch.json "$out"/*.log

# --- report helpers -----------------------------------------------------------

# json_str prints $1 as a JSON string (control characters other than newline,
# tab and CR are dropped).
json_str() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\t'/\\t}
	s=${s//$'\r'/\\r}
	s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
	printf '"%s"' "$s"
}

# json_lines prints $1 as a JSON array of its lines, indented for a step.
json_lines() {
	local line first=1
	printf '['
	while IFS= read -r line; do
		((first)) || printf ','
		first=0
		printf '\n        %s' "$(json_str "$line")"
	done <<<"$1"
	printf '\n      ]'
}

# json_words prints the words of $1 as a JSON array of strings.
json_words() {
	local w first=1
	printf '['
	for w in $1; do
		((first)) || printf ', '
		first=0
		json_str "$w"
	done
	printf ']'
}

# tail_chars keeps the last 3000 characters of $1.
tail_chars() {
	local s=$1
	if ((${#s} > 3000)); then
		s="...${s: -3000}"
	fi
	printf '%s' "$s"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# json_member FILE KEY prints the value of top-level member KEY of FILE, a
# JSON object as the plugin prints it (json.Encoder, two-space indent: the
# top-level members are exactly the lines indented by two spaces), re-indented
# as if it were the top level.
json_member() {
	awk -v key="$2" '
		!found && index($0, "  \"" key "\": ") == 1 {
			found = 1; v = substr($0, length(key) + 7)
			sub(/,$/, "", v); print v
			if (v !~ /[{[]$/) exit
			next
		}
		found && /^  [}\]]/ { v = substr($0, 3); sub(/,$/, "", v); print v; exit }
		found { print substr($0, 3) }
	' "$1"
}

steps=(preflight build discover inventory health_watch mps mig realnvml_test)
declare -A st_status st_dur st_out st_result
for s in "${steps[@]}"; do st_status[$s]=skipped; done

# record NAME ok|error|skipped DURATION OUTPUT [RESULT_JSON]
record() {
	st_status[$1]=$2
	st_dur[$1]=$3
	st_out[$1]=$(tail_chars "$4")
	st_result[$1]=${5:-}
	printf 'gpu-check: %-14s %-7s %ss\n' "$1" "$2" "$3" >&2
}

total_start=$(now)
write_report() {
	local f=$out/report.json ok=true s first=1 mode
	for s in "${steps[@]}"; do
		if [[ ${st_status[$s]} == error ]]; then ok=false; fi
	done
	{
		printf '{\n  "tool": "hack/gpu-check.sh",\n'
		printf '  "time": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
		printf '  "host": %s,\n' "$(json_str "$(hostname 2>/dev/null || echo unknown)")"
		if [[ -n $fake ]]; then mode="fake:$fake"; else mode=nvml; fi
		printf '  "mode": %s,\n' "$(json_str "$mode")"
		printf '  "ok": %s,\n  "durationSeconds": %s,\n  "steps": {' "$ok" "$(elapsed "$total_start")"
		for s in "${steps[@]}"; do
			((first)) || printf ','
			first=0
			if [[ ${st_status[$s]} == skipped ]]; then
				printf '\n    "%s": { "status": "skipped", "reason": %s }' "$s" "$(json_str "${st_out[$s]:-}")"
				continue
			fi
			printf '\n    "%s": {\n      "status": "%s"' "$s" "${st_status[$s]}"
			if [[ -n ${st_dur[$s]:-} ]]; then printf ',\n      "durationSeconds": %s' "${st_dur[$s]}"; fi
			printf ',\n      "output": %s' "$(json_lines "${st_out[$s]:-}")"
			if [[ -n ${st_result[$s]:-} ]]; then printf ',\n      "result": %s' "$(sed '2,$s/^/      /' <<<"${st_result[$s]}")"; fi
			printf '\n    }'
		done
		printf '\n  }\n}\n'
	} >"$f"
	echo "gpu-check: report $f" >&2
	[[ $ok == true ]]
}

# finish_skipping REASON: the remaining steps are skipped; write the report, fail.
finish_skipping() {
	local s
	for s in "${steps[@]}"; do
		if [[ ${st_status[$s]} == skipped && -z ${st_out[$s]:-} ]]; then st_out[$s]=$1; fi
	done
	write_report || true
	exit 1
}

# --- preflight ------------------------------------------------------------------

t=$(now)
pre=""
plugin_args=()
if [[ -n $fake ]]; then
	plugin_args+=(--fake-gpus="$fake")
	record preflight ok "$(elapsed "$t")" "GPU_CHECK_FAKE=$fake: fake GPUs, no NVML library or GPU needed"
else
	if [[ -n $nvml_lib ]]; then
		[[ -f $nvml_lib ]] && lib=$nvml_lib
		plugin_args+=(--nvml-lib="$nvml_lib")
		searched="GPU_CHECK_NVML_LIB=$nvml_lib"
	else
		lib=$( (ldconfig -p 2>/dev/null || true) | awk '/libnvidia-ml\.so\.1 .*(x86-64|AArch64)/ { print $NF; found = 1; exit } /libnvidia-ml\.so\.1 / { p = $NF } END { if (!found && p) print p }')
		searched="ldconfig -p"
		if [[ -z $lib ]]; then
			IFS=: read -ra ldpath <<<"${LD_LIBRARY_PATH:-}"
			for d in "${ldpath[@]}" /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib \
				/usr/local/nvidia/lib64 /usr/local/nvidia/lib /run/nvidia/driver/usr/lib/x86_64-linux-gnu /run/nvidia/driver/usr/lib64; do
				[[ -n $d ]] || continue
				searched+=", $d"
				if [[ -e $d/libnvidia-ml.so.1 ]]; then
					lib=$d/libnvidia-ml.so.1
					# Not on the loader's path unless in LD_LIBRARY_PATH: name it.
					[[ :${LD_LIBRARY_PATH:-}: == *:$d:* ]] || plugin_args+=(--nvml-lib="$lib")
					break
				fi
			done
		fi
	fi
	devs=$(ls /dev/nvidia[0-9]* 2>/dev/null | tr '\n' ' ' || true)
	pre+="libnvidia-ml.so.1: ${lib:-NOT FOUND (searched $searched)}"$'\n'
	pre+="GPU device nodes: ${devs:-none under /dev/nvidia[0-9]* (a container may name them differently; discovery decides)}"$'\n'
	if command -v nvidia-smi >/dev/null; then
		pre+="nvidia-smi -L:"$'\n'"$(timeout 20 nvidia-smi -L 2>&1 || true)"$'\n'
	else
		pre+="nvidia-smi: not installed"$'\n'
	fi
	pre+="glibc: $( (ldd --version 2>&1 || true) | head -n1) (the plugin built on Debian 12 needs >= 2.34)"
	if [[ -z $lib ]]; then
		record preflight error "$(elapsed "$t")" "$pre"
		cat >&2 <<EOF
gpu-check: FAIL: no NVIDIA GPU here: libnvidia-ml.so.1 not found (searched $searched).
gpu-check: run this on a machine with an NVIDIA GPU and driver, set GPU_CHECK_NVML_LIB=/path/to/libnvidia-ml.so.1,
gpu-check: or set GPU_CHECK_FAKE=4xH100-80GB to exercise the script on fake GPUs.
EOF
		finish_skipping "not run: preflight found no NVIDIA GPU (libnvidia-ml.so.1 missing)"
	fi
	record preflight ok "$(elapsed "$t")" "$pre"
fi

# --- build ----------------------------------------------------------------------------

# unpack FILE: a FILE.gz (binaries travel gzipped: a third of the size) is
# unpacked into $out; prints the path to run.
unpack() {
	if [[ $1 == *.gz ]]; then
		local dst
		dst=$out/$(basename "${1%.gz}")
		gzip -dc "$1" >"$dst" && chmod +x "$dst" && printf '%s' "$dst"
	else
		printf '%s' "$1"
	fi
}

t=$(now)
if [[ -n $testbin && -f $testbin ]]; then
	testbin=$(unpack "$testbin")
fi
if [[ -n $bin ]]; then
	if [[ -f $bin ]]; then bin=$(unpack "$bin"); fi
	if [[ ! -x $bin ]]; then
		record build error "$(elapsed "$t")" "GPU_CHECK_BIN=$bin: not an executable file"
		echo "gpu-check: FAIL: GPU_CHECK_BIN=$bin is not an executable file" >&2
		finish_skipping "not run: no device plugin binary"
	fi
	record build ok "$(elapsed "$t")" "prebuilt GPU_CHECK_BIN=$GPU_CHECK_BIN: $bin ($(wc -c <"$bin") bytes, sha256 $(sha256sum "$bin" | cut -c1-16))"
else
	bin=$out/tessera-device-plugin
	if ! command -v "$GO" >/dev/null; then
		record build error "$(elapsed "$t")" "no Go toolchain ($GO) here: build on another machine with CGO_ENABLED=1 go build -o tessera-device-plugin ./cmd/tessera-device-plugin and set GPU_CHECK_BIN"
		echo "gpu-check: FAIL: no Go toolchain to build the device plugin; build it elsewhere and set GPU_CHECK_BIN (see the script's header)" >&2
		finish_skipping "not run: no device plugin binary"
	fi
	rc=0
	CGO_ENABLED=1 timeout 600 "$GO" build -o "$bin" ./cmd/tessera-device-plugin >"$out/build.log" 2>&1 || rc=$?
	if ((rc != 0)); then
		# cgo prints pages of deprecation warnings from go-nvml's header; keep the rest.
		record build error "$(elapsed "$t")" "CGO_ENABLED=1 go build exited $rc (full log $out/build.log):"$'\n'"$(grep -v -e 'deprecated' -e 'declared here' -e '^ *[0-9]* |' -e '^ *|' -e 'cgo-gcc-prolog: In function' "$out/build.log" | tail -n 30)"
		echo "gpu-check: FAIL: building the device plugin (log $out/build.log)" >&2
		finish_skipping "not run: the build failed"
	fi
	record build ok "$(elapsed "$t")" "CGO_ENABLED=1 go build -o $bin ./cmd/tessera-device-plugin (log $out/build.log)"
fi

# --- discover, inventory, health watch -----------------------------------------

t=$(now)
rc=0
table=$(timeout 60 "$bin" discover --xid-wait=1s "${plugin_args[@]}" 2>&1) || rc=$?
if ((rc != 0)); then
	record discover error "$(elapsed "$t")" "tessera-device-plugin discover exited $rc:"$'\n'"$table"
	echo "gpu-check: FAIL: discovery failed:" >&2
	echo "$table" >&2
	finish_skipping "not run: discovery failed"
fi
echo "$table" >&2
if [[ $table == *"GPUs: 0"$'\n'* ]]; then
	record discover error "$(elapsed "$t")" "NVML reports no GPUs:"$'\n'"$table"
	finish_skipping "not run: NVML reports no GPUs"
fi
record discover ok "$(elapsed "$t")" "$table"

t=$(now)
rc=0
timeout 60 "$bin" discover --json --xid-wait=1s "${plugin_args[@]}" >"$out/discover.json" 2>"$out/discover.log" || rc=$?
if ((rc != 0)); then
	record inventory error "$(elapsed "$t")" "discover --json exited $rc: $(cat "$out/discover.log")"
else
	inv=$(json_member "$out/discover.json" inventory)
	record inventory ok "$(elapsed "$t")" "the inventory the plugin would publish (default config); whole discovery in $out/discover.json" "$inv"
fi

t=$(now)
echo "gpu-check: watching Xid events for ${health_s}s" >&2
rc=0
timeout $((health_s + 60)) "$bin" discover --json --xid-wait="${health_s}s" "${plugin_args[@]}" >"$out/health-watch.json" 2>"$out/health-watch.log" || rc=$?
if ((rc != 0)); then
	record health_watch error "$(elapsed "$t")" "discover --json --xid-wait=${health_s}s exited $rc: $(cat "$out/health-watch.log")"
else
	health=$(json_member "$out/health-watch.json" health)
	xid=$(json_member "$out/health-watch.json" xid)
	ngpu=$(grep -c '": "' <<<"$health" || true)
	unhealthy=$(grep -v -e '^[{}]' -e '": "ok",\?$' <<<"$health" | sed 's/^ *//' || true)
	nreg=$(awk '/"registered": \[/ { on = 1; next } on && /\]/ { exit } on { n++ } END { print n + 0 }' <<<"$xid")
	nev=$(awk '/"events": \[/ { on = 1; next } on && /\]/ { exit } on { n++ } END { print n + 0 }' <<<"$xid")
	status=ok
	summary="${health_s}s Xid watch: $ngpu GPUs, health probe ok on $((ngpu - $(grep -c . <<<"$unhealthy" || true))), Xid registered on $nreg, $nev Xid events"
	if [[ -n $unhealthy ]]; then
		status=error
		summary+=$'\n'"unhealthy: $unhealthy"
	fi
	if ((nreg != ngpu)) || grep -q -e '"errors"' -e '"watchError"' <<<"$xid"; then
		status=error
		summary+=$'\n'"Xid registration or watch errors: see result.xid"
	fi
	record health_watch "$status" "$(elapsed "$t")" "$summary" "{
  \"health\": $(sed '2,$s/^/  /' <<<"$health"),
  \"xid\": $(sed '2,$s/^/  /' <<<"$xid")
}"
fi

# --- MPS and MIG ----------------------------------------------------------------------

t=$(now)
mps_procs=""
for c in /proc/[0-9]*/comm; do
	name=$(cat "$c" 2>/dev/null || true)
	case $name in nvidia-cuda-mps*) mps_procs+="${name} (pid $(basename "$(dirname "$c")")) " ;; esac
done
mps_dirs=""
mps_control=""
for d in "${GPU_CHECK_MPS_PIPE_DIR:-/run/nvidia/mps}" ${CUDA_MPS_PIPE_DIRECTORY:+"$CUDA_MPS_PIPE_DIRECTORY"} /tmp/nvidia-mps; do
	[[ -d $d ]] || continue
	mps_dirs+="$d "
	[[ -p $d/control ]] && mps_control+="$d/control "
done
mps_running=false
[[ -n $mps_procs ]] && mps_running=true
mps_text="control daemon: ${mps_procs:-not running}"$'\n'"pipe directories: ${mps_dirs:-none}"$'\n'"control pipe: ${mps_control:-none}"
if [[ -z $fake ]] && command -v nvidia-smi >/dev/null; then
	mps_text+=$'\n'"nvidia-smi compute mode (MPS usually runs with Exclusive_Process):"$'\n'"$(timeout 20 nvidia-smi --query-gpu=index,compute_mode --format=csv,noheader 2>&1 || true)"
fi
if [[ -n $mps_control && -z $mps_procs ]]; then
	mps_text+=$'\n'"note: a control pipe without a running daemon (stale, or the daemon runs in another PID namespace)"
fi
record mps ok "$(elapsed "$t")" "$mps_text" "{ \"daemonRunning\": $mps_running, \"pipeDirs\": $(json_words "$mps_dirs"), \"controlPipes\": $(json_words "$mps_control") }"

t=$(now)
if [[ -s $out/discover.json ]]; then
	gpus=$(json_member "$out/discover.json" gpus)
	n_gpu=$(grep -c '^  {' <<<"$gpus" || true)
	n_mig=$(grep -c '"migEnabled": true' <<<"$gpus" || true)
	n_migdev=$(grep -c '"gpuInstanceID"' <<<"$gpus" || true)
	mig_text="NVML: MIG mode on $n_mig of $n_gpu GPUs, $n_migdev MIG devices"
	if [[ -z $fake ]] && command -v nvidia-smi >/dev/null; then
		mig_text+=$'\n'"nvidia-smi (index, mig.mode.current, mig.mode.pending):"$'\n'"$(timeout 20 nvidia-smi --query-gpu=index,mig.mode.current,mig.mode.pending --format=csv,noheader 2>&1 || true)"
	fi
	record mig ok "$(elapsed "$t")" "$mig_text" "{ \"gpus\": $n_gpu, \"migEnabledGPUs\": $n_mig, \"migDevices\": $n_migdev }"
else
	record mig error "$(elapsed "$t")" "no discovery JSON (the inventory step failed)"
fi

# --- optional: the real-NVML test against the in-process kubelet ---------------

if [[ -n $testbin && -n $fake ]]; then
	st_out[realnvml_test]="GPU_CHECK_FAKE is set (the test needs real NVML)"
elif [[ -n $testbin ]]; then
	t=$(now)
	rc=0
	tout=$(cd "$out" && LD_LIBRARY_PATH="${lib:+$(dirname "$lib"):}${LD_LIBRARY_PATH:-}" TESSERA_REAL_NVML=1 timeout 150 "$testbin" -test.run '^TestRealNVMLWithKubelet$' -test.v -test.timeout 120s 2>&1) || rc=$?
	printf '%s\n' "$tout" >"$out/realnvml-test.log"
	if ((rc == 0)) && grep -q -- '--- PASS: TestRealNVMLWithKubelet' <<<"$tout"; then
		record realnvml_test ok "$(elapsed "$t")" "$tout"
	else
		record realnvml_test error "$(elapsed "$t")" "exit $rc:"$'\n'"$tout"
	fi
else
	st_out[realnvml_test]="set GPU_CHECK_TEST_BIN to a go test -c ./deviceplugin/ binary"
fi

write_report
