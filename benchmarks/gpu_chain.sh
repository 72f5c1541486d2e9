# One benchmark longer than a device call, over several calls: the first call starts it detached (a process
# session of its own outlives the call), and every call watches it for up to WATCH seconds, prints what it
# logged since the last call, and copies what it has written so far to $OUT. A lent machine stays warm for
# 30 s after a call: the next call must come within that, or the machine and the run are gone.
#
#     bash benchmarks/gpu_chain.sh WATCH_S WORK -- COMMAND [ARGS...]     # the same line in every call
#
# The first call also sources benchmarks/gpu_setup.sh (the bundle in .gpu) and writes the machine's facts
# (GPU, cores, memory, disk and /dev/shm free) to WORK/machine.txt. What comes back in $OUT: WORK/*.json,
# WORK/machine.txt, WORK/chain.log, the last 2 MB of every other WORK/*.log and WORK/*.csv (logs.tar.gz), and
# WORK/*.mp4.

set -u
watch_s=${1:?usage: gpu_chain.sh WATCH_S WORK -- COMMAND...}
work=${2:?usage: gpu_chain.sh WATCH_S WORK -- COMMAND...}
shift 2
[ "${1:-}" = "--" ] && shift
state=$work/.chain
mkdir -p "$state"
t0=$(date +%s)

if [ ! -f "$state/pid" ]; then
    {
        date -u '+%Y-%m-%d %H:%M:%S UTC'
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        echo "cores $(nproc)"
        free -g | sed -n 2p
        df -h / /tmp /dev/shm
    } > "$work/machine.txt" 2>&1
    cat "$work/machine.txt"
    . benchmarks/gpu_setup.sh "${SVP_GPU_BUNDLE:-.gpu}" > "$state/setup.log" 2>&1 || { cat "$state/setup.log"; exit 1; }
    tail -n 2 "$state/setup.log"
    # setsid: the run outlives this call; its exit status lands in $state/rc
    setsid bash -c '"$@"; echo $? > "'"$state"'/rc"' chain "$@" > "$work/chain.log" 2>&1 < /dev/null &
    echo $! > "$state/pid"
    echo 0 > "$state/printed"
    echo "gpu_chain: started pid $(cat "$state/pid"): $*"
fi

print_new_lines() {
    local printed total
    printed=$(cat "$state/printed")
    total=$(wc -l < "$work/chain.log")
    if [ "$total" -gt "$printed" ]; then
        sed -n "$((printed + 1)),${total}p" "$work/chain.log"
        echo "$total" > "$state/printed"
    fi
}

while [ ! -f "$state/rc" ] && [ $(( $(date +%s) - t0 )) -lt "$watch_s" ]; do
    print_new_lines
    sleep 5
done
print_new_lines

if [ -n "${OUT:-}" ]; then
    cp "$work"/*.json "$work/machine.txt" "$work/chain.log" "$OUT"/ 2>/dev/null
    cp "$work"/*.mp4 "$OUT"/ 2>/dev/null
    mkdir -p "$state/tails"
    for f in "$work"/*.log "$work"/*.csv; do
        [ -f "$f" ] && [ "$(basename "$f")" != chain.log ] && tail -c 2000000 "$f" > "$state/tails/$(basename "$f")"
    done
    tar -czf "$OUT/logs.tar.gz" -C "$state/tails" . 2>/dev/null
fi

if [ -f "$state/rc" ]; then
    echo "gpu_chain: the run ended with exit status $(cat "$state/rc")"
    exit "$(cat "$state/rc")"
fi
echo "gpu_chain: still running after this call's ${watch_s} s; call again within 30 s to keep the machine"
