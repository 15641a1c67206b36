#!/bin/bash
# Side by side with the C origin pairfs grew out of: one storage server each, one client
# session piping N of each command (CREATE, a WRITE session, READ), alternating trials, the
# median ops/s of each phase and the ratio pairfs ÷ origin.
#
#   bench/vs_origin.sh ORIGIN_DIR [N] [TRIALS]
#
# ORIGIN_DIR holds the origin's bin_nm, bin_ss and bin_client (its `make all`); pairfs's come
# from target/release (PAIRFS_BIN overrides). Servers listen on 127.0.0.1 and are stopped by
# PID.
set -euo pipefail
origin=$(cd "$1" && pwd)
n=${2:-200}
trials=${3:-3}
pairfs=$(cd "${PAIRFS_BIN:-target/release}" && pwd)
work=$(mktemp -d /tmp/pairfs-vs-origin.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${VS_ORIGIN_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export XDG_CONFIG_HOME=$work/cfg

p_nm=$(port); p_ss=$(port)
"$pairfs/bin_nm" --host 127.0.0.1 --port "$p_nm" --http-port 0 --data "$work/p_nm" \
    --cluster-key-file "$work/key" >"$work/p_nm.log" 2>&1 &
pids+=($!)
sleep 0.3
"$pairfs/bin_ss" --nm-port "$p_nm" --host 127.0.0.1 --client-port "$p_ss" --storage "$work/p_ss1" \
    --username ss1 --cluster-key-file "$work/key" >"$work/p_ss.log" 2>&1 &
pids+=($!)
o_nm=$(port); o_ss=$(port)
(cd "$work" && exec "$origin/bin_nm" --host 127.0.0.1 --port "$o_nm" >"$work/o_nm.log" 2>&1) &
pids+=($!)
sleep 0.3
(cd "$work" && exec "$origin/bin_ss" --nm-host 127.0.0.1 --nm-port "$o_nm" --host 127.0.0.1 \
    --client-port "$o_ss" --storage "$work/o_ss1" --username ss1 >"$work/o_ss.log" 2>&1) &
pids+=($!)

client() { # which, then stdin
    if [ "$1" = pairfs ]; then
        "$pairfs/bin_client" --nm-port "$p_nm" --username alice
    else
        (cd "$work" && "$origin/bin_client" --nm-host 127.0.0.1 --nm-port "$o_nm" --username alice)
    fi
}
# Both clusters answer a CREATE before the trials start.
for who in pairfs origin; do
    for _ in $(seq 100); do
        if printf 'CREATE ready.txt\n' | client "$who" 2>&1 | grep -q -i "success"; then continue 2; fi
        sleep 0.1
    done
    echo "vs_origin: the $who cluster did not come up (logs in $work)" >&2
    exit 1
done

phase() { # who trial what -> ops/s
    local who=$1 t=$2 what=$3 input=$work/in
    case $what in
        CREATE) for i in $(seq "$n"); do echo "CREATE t${t}_$i.txt"; done >"$input" ;;
        WRITE) for i in $(seq "$n"); do printf 'WRITE t%s_1.txt 0\n0 word%s\nETIRW\n' "$t" "$i"; done >"$input" ;;
        READ) for i in $(seq "$n"); do echo "READ t${t}_1.txt"; done >"$input" ;;
    esac
    local s e
    s=$(date +%s.%N)
    client "$who" <"$input" >"$work/out.$who.$what" 2>&1 || true
    e=$(date +%s.%N)
    python3 -c "print(f'{$n / ($e - $s):.0f}')"
}

declare -A runs
for t in $(seq "$trials"); do
    for who in pairfs origin; do
        for what in CREATE WRITE READ; do
            runs[$who.$what]+="$(phase "$who" "$t" "$what") "
        done
    done
done
echo "| phase ($n per session, median of $trials alternating trials) | pairfs ops/s | origin ops/s | pairfs ÷ origin |"
echo "|---|---:|---:|---:|"
for what in CREATE WRITE READ; do
    python3 - "$what" ${runs[pairfs.$what]} -- ${runs[origin.$what]} <<'PY'
import statistics, sys
what = sys.argv[1]
rest = sys.argv[2:]
cut = rest.index("--")
p = [float(x) for x in rest[:cut]]
o = [float(x) for x in rest[cut + 1:]]
mp, mo = statistics.median(p), statistics.median(o)
print(f"| {what} | {mp:.0f} ({min(p):.0f}–{max(p):.0f}) | {mo:.0f} ({min(o):.0f}–{max(o):.0f}) | {mp / mo:.2f}× |")
PY
done
