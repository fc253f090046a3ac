#!/bin/sh
# legacytrace ftrace program (tracepoint mode) for kernel 6.18.44-fc-v669.
# Usage: sh THIS_SCRIPT [CAPTURE_FILE]; stop with Ctrl-C; then
#        legacytrace parse --backend ftrace CAPTURE_FILE
set -u
OUT=${1:-legacytrace-ftrace.trace}
RELEASE='6.18.44-fc-v669'
if [ "$(uname -r)" != "$RELEASE" ]; then
    echo "this program was built for kernel $RELEASE, not $(uname -r)" >&2; exit 1
fi
T=
for d in /sys/kernel/tracing /sys/kernel/debug/tracing; do
    if [ -e "$d/trace" ]; then T=$d; break; fi
done
if [ -z "$T" ]; then
    if mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then T=/sys/kernel/tracing
    elif mount -t debugfs nodev /sys/kernel/debug; then T=/sys/kernel/debug/tracing
    else echo "no tracefs (run as root)" >&2; exit 1; fi
fi
G=legacytrace_lt$$
I="$T/instances/$G"
ADDED= ENABLED= MADE= READER=
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$READER" ]; then kill "$READER" 2>/dev/null; wait "$READER" 2>/dev/null; fi
    for e in $ENABLED; do
        echo 0 > "$I/events/$e/enable" || echo "warning: could not disable $e" >&2
    done
    if [ -n "$MADE" ]; then rmdir "$I" || echo "warning: could not remove $I" >&2; fi
    for e in $ADDED; do
        echo "-:$G/$e" >> "$T/kprobe_events" || echo "warning: could not remove $G/$e" >&2
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
mkdir "$I" || exit 1
MADE=1
for c in mono global; do echo $c > "$I/trace_clock" 2>/dev/null && break; done
echo 4096 > "$I/buffer_size_kb"
[ -e "$I/options/hash-ptr" ] && echo 0 > "$I/options/hash-ptr"
echo 1 > "$I/events/net/net_dev_queue/enable" || exit 1
ENABLED="$ENABLED net/net_dev_queue"
echo 1 > "$I/events/skb/kfree_skb/enable" || exit 1
ENABLED="$ENABLED skb/kfree_skb"
echo "# legacytrace ftrace capture: kernel $RELEASE, group $G" > "$OUT"
cat "$I/trace_pipe" >> "$OUT" &
READER=$!
echo "capturing to $OUT; stop with Ctrl-C" >&2
wait "$READER"
