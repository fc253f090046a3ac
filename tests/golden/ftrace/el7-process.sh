#!/bin/sh
# legacytrace ftrace program (kprobe mode) for kernel 3.10.0-1160.el7.x86_64, struct offsets from table el7-x86_64.
# Usage: sh THIS_SCRIPT [CAPTURE_FILE]; stop with Ctrl-C; then
#        legacytrace parse --backend ftrace CAPTURE_FILE
set -u
OUT=${1:-legacytrace-ftrace.trace}
RELEASE='3.10.0-1160.el7.x86_64'
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
echo p:"$G"'/ip_rcv ip_rcv skb=%di:u64 len=+104(%di):u32 eth=+126(%di):u16 head=+224(%di):u64 data=+232(%di):u64 nh=+194(%di):u16 dev=+0(+32(%di)):string dp0=+0(+232(%di)):u64 dp8=+8(+232(%di)):u64 dp16=+16(+232(%di)):u64 dp24=+24(+232(%di)):u64 dp32=+32(+232(%di)):u64 dp40=+40(+232(%di)):u64 sk=+24(%di):u64 f40_v=+0(+232(%di)):u8 f40_p=+9(+232(%di)):u8 f61_v=+0(+232(%di)):u8 f61_p=+6(+232(%di)):u8' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED ip_rcv"
echo p:"$G"'/ip_local_deliver ip_local_deliver skb=%di:u64 len=+104(%di):u32 eth=+126(%di):u16 head=+224(%di):u64 data=+232(%di):u64 nh=+194(%di):u16 dev=+0(+32(%di)):string dp0=+0(+232(%di)):u64 dp8=+8(+232(%di)):u64 dp16=+16(+232(%di)):u64 dp24=+24(+232(%di)):u64 dp32=+32(+232(%di)):u64 dp40=+40(+232(%di)):u64 sk=+24(%di):u64 f40_v=+0(+232(%di)):u8 f40_p=+9(+232(%di)):u8 f61_v=+0(+232(%di)):u8 f61_p=+6(+232(%di)):u8' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED ip_local_deliver"
echo p:"$G"'/tcp_v4_rcv tcp_v4_rcv skb=%di:u64 len=+104(%di):u32 eth=+126(%di):u16 head=+224(%di):u64 data=+232(%di):u64 nh=+194(%di):u16 dev=+0(+32(%di)):string dm40=-40(+232(%di)):u64 dm32=-32(+232(%di)):u64 dm24=-24(+232(%di)):u64 dm16=-16(+232(%di)):u64 dm8=-8(+232(%di)):u64 dp0=+0(+232(%di)):u64 sk=+24(%di):u64 f40_v=-20(+232(%di)):u8 f40_p=-11(+232(%di)):u8' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED tcp_v4_rcv"
echo p:"$G"'/ip_output ip_output skb=%si:u64 len=+104(%si):u32 eth=+126(%si):u16 head=+224(%si):u64 data=+232(%si):u64 nh=+194(%si):u16 dev=+0(+32(%si)):string dp0=+0(+232(%si)):u64 dp8=+8(+232(%si)):u64 dp16=+16(+232(%si)):u64 dp24=+24(+232(%si)):u64 dp32=+32(+232(%si)):u64 dp40=+40(+232(%si)):u64 sk=%di:u64 f40_v=+0(+232(%si)):u8 f40_p=+9(+232(%si)):u8 f61_v=+0(+232(%si)):u8 f61_p=+6(+232(%si)):u8' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED ip_output"
echo p:"$G"'/dev_queue_xmit dev_queue_xmit skb=%di:u64 len=+104(%di):u32 eth=+126(%di):u16 head=+224(%di):u64 data=+232(%di):u64 nh=+194(%di):u16 dev=+0(+32(%di)):string dp8=+8(+232(%di)):u64 dp16=+16(+232(%di)):u64 dp24=+24(+232(%di)):u64 dp32=+32(+232(%di)):u64 dp40=+40(+232(%di)):u64 dp48=+48(+232(%di)):u64 dp56=+56(+232(%di)):u64 sk=+24(%di):u64 f40_v=+14(+232(%di)):u8 f40_p=+23(+232(%di)):u8 f40_e=+12(+232(%di)):u16 f61_v=+14(+232(%di)):u8 f61_p=+20(+232(%di)):u8 f61_e=+12(+232(%di)):u16' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED dev_queue_xmit"
echo p:"$G"'/kfree_skb kfree_skb skb=%di:u64 len=+104(%di):u32 eth=+126(%di):u16 head=+224(%di):u64 data=+232(%di):u64 nh=+194(%di):u16 dev=+0(+32(%di)):string dm40=-40(+232(%di)):u64 dm32=-32(+232(%di)):u64 dm24=-24(+232(%di)):u64 dm16=-16(+232(%di)):u64 dm8=-8(+232(%di)):u64 dp0=+0(+232(%di)):u64 dp8=+8(+232(%di)):u64 dp16=+16(+232(%di)):u64 dp24=+24(+232(%di)):u64 dp32=+32(+232(%di)):u64 dp40=+40(+232(%di)):u64 dp48=+48(+232(%di)):u64 dp56=+56(+232(%di)):u64 sk=+24(%di):u64 f40_v=+0(+232(%di)):u8 f40_p=+9(+232(%di)):u8 f61_v=+0(+232(%di)):u8 f61_p=+6(+232(%di)):u8 f42_v=+14(+232(%di)):u8 f42_p=+23(+232(%di)):u8 f42_e=+12(+232(%di)):u16 f63_v=+14(+232(%di)):u8 f63_p=+20(+232(%di)):u8 f63_e=+12(+232(%di)):u16 f44_v=-20(+232(%di)):u8 f44_p=-11(+232(%di)):u8 f65_v=-40(+232(%di)):u8 f65_p=-34(+232(%di)):u8' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED kfree_skb"
echo p:"$G"'/tcp_sendmsg tcp_sendmsg sk=%di:u64 skc_family=+16(%di):u16 skc_saddr=+4(%di):u32 skc_daddr=+0(%di):u32 skc_sport=+14(%di):u16 skc_dport=+12(%di):u16 skc_saddr6a=+72(%di):u64 skc_saddr6b=+80(%di):u64 skc_daddr6a=+56(%di):u64 skc_daddr6b=+64(%di):u64 fs_family=+16(%di):u16' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED tcp_sendmsg"
echo r:"$G"'/ip_rcv_ret ip_rcv ret=$retval:u64' >> "$T/kprobe_events" || exit 1
ADDED="$ADDED ip_rcv_ret"
mkdir "$I" || exit 1
MADE=1
for c in mono global; do echo $c > "$I/trace_clock" 2>/dev/null && break; done
echo 4096 > "$I/buffer_size_kb"
[ -e "$I/options/hash-ptr" ] && echo 0 > "$I/options/hash-ptr"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && ((f40_v >= 69 && f40_v <= 79 && (eth == 0 || eth == 8) && f40_p == 17) || (f61_v >= 96 && f61_v <= 111 && (eth == 0 || eth == 56710) && (f61_p == 17 || f61_p == 0 || f61_p == 43 || f61_p == 44 || f61_p == 60)) || ((f40_v < 69 || f40_v > 79 || (eth != 0 && eth != 8)) && (f61_v < 96 || f61_v > 111 || (eth != 0 && eth != 56710))))' > "$I/events/$G/ip_rcv/filter" || exit 1
echo 1 > "$I/events/$G/ip_rcv/enable" || exit 1
ENABLED="$ENABLED $G/ip_rcv"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && ((f40_v >= 69 && f40_v <= 79 && (eth == 0 || eth == 8) && f40_p == 17) || (f61_v >= 96 && f61_v <= 111 && (eth == 0 || eth == 56710) && (f61_p == 17 || f61_p == 0 || f61_p == 43 || f61_p == 44 || f61_p == 60)) || ((f40_v < 69 || f40_v > 79 || (eth != 0 && eth != 8)) && (f61_v < 96 || f61_v > 111 || (eth != 0 && eth != 56710))))' > "$I/events/$G/ip_local_deliver/filter" || exit 1
echo 1 > "$I/events/$G/ip_local_deliver/enable" || exit 1
ENABLED="$ENABLED $G/ip_local_deliver"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && (f40_v != 69 || (eth != 0 && eth != 8) || f40_p != 6)' > "$I/events/$G/tcp_v4_rcv/filter" || exit 1
echo 1 > "$I/events/$G/tcp_v4_rcv/enable" || exit 1
ENABLED="$ENABLED $G/tcp_v4_rcv"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && ((f40_v >= 69 && f40_v <= 79 && (eth == 0 || eth == 8) && f40_p == 17) || (f61_v >= 96 && f61_v <= 111 && (eth == 0 || eth == 56710) && (f61_p == 17 || f61_p == 0 || f61_p == 43 || f61_p == 44 || f61_p == 60)) || ((f40_v < 69 || f40_v > 79 || (eth != 0 && eth != 8)) && (f61_v < 96 || f61_v > 111 || (eth != 0 && eth != 56710))))' > "$I/events/$G/ip_output/filter" || exit 1
echo 1 > "$I/events/$G/ip_output/enable" || exit 1
ENABLED="$ENABLED $G/ip_output"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && ((f40_v >= 69 && f40_v <= 79 && (eth == 0 || eth == 8) && f40_e == 8 && f40_p == 17) || (f61_v >= 96 && f61_v <= 111 && (eth == 0 || eth == 56710) && f61_e == 56710 && (f61_p == 17 || f61_p == 0 || f61_p == 43 || f61_p == 44 || f61_p == 60)) || ((f40_v < 69 || f40_v > 79 || (eth != 0 && eth != 8) || f40_e != 8) && (f61_v < 96 || f61_v > 111 || (eth != 0 && eth != 56710) || f61_e != 56710)))' > "$I/events/$G/dev_queue_xmit/filter" || exit 1
echo 1 > "$I/events/$G/dev_queue_xmit/enable" || exit 1
ENABLED="$ENABLED $G/dev_queue_xmit"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && ((f40_v >= 69 && f40_v <= 79 && (eth == 0 || eth == 8) && f40_p == 17) || (f61_v >= 96 && f61_v <= 111 && (eth == 0 || eth == 56710) && (f61_p == 17 || f61_p == 0 || f61_p == 43 || f61_p == 44 || f61_p == 60)) || (f42_v >= 69 && f42_v <= 79 && (eth == 0 || eth == 8) && f42_e == 8 && f42_p == 17) || (f63_v >= 96 && f63_v <= 111 && (eth == 0 || eth == 56710) && f63_e == 56710 && (f63_p == 17 || f63_p == 0 || f63_p == 43 || f63_p == 44 || f63_p == 60)) || (f44_v == 69 && (eth == 0 || eth == 8) && (f44_p == 1 || f44_p == 6 || f44_p == 17) && f44_p == 17) || (f65_v >= 96 && f65_v <= 111 && (eth == 0 || eth == 56710) && (f65_p == 6 || f65_p == 17 || f65_p == 58) && f65_p == 17) || ((f40_v < 69 || f40_v > 79 || (eth != 0 && eth != 8)) && (f61_v < 96 || f61_v > 111 || (eth != 0 && eth != 56710)) && (f42_v < 69 || f42_v > 79 || (eth != 0 && eth != 8) || f42_e != 8) && (f63_v < 96 || f63_v > 111 || (eth != 0 && eth != 56710) || f63_e != 56710) && (f44_v != 69 || (eth != 0 && eth != 8) || (f44_p != 1 && f44_p != 6 && f44_p != 17)) && (f65_v < 96 || f65_v > 111 || (eth != 0 && eth != 56710) || (f65_p != 6 && f65_p != 17 && f65_p != 58))))' > "$I/events/$G/kfree_skb/filter" || exit 1
echo 1 > "$I/events/$G/kfree_skb/enable" || exit 1
ENABLED="$ENABLED $G/kfree_skb"
echo '(common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900) && (fs_family > 65535)' > "$I/events/$G/tcp_sendmsg/filter" || exit 1
echo 1 > "$I/events/$G/tcp_sendmsg/enable" || exit 1
ENABLED="$ENABLED $G/tcp_sendmsg"
echo 'common_flags >= 8 || (common_pid >= 812 && common_pid <= 814) || common_pid == 900' > "$I/events/$G/ip_rcv_ret/filter" || exit 1
echo 1 > "$I/events/$G/ip_rcv_ret/enable" || exit 1
ENABLED="$ENABLED $G/ip_rcv_ret"
echo "# legacytrace ftrace capture: kernel $RELEASE, group $G" > "$OUT"
cat "$I/trace_pipe" >> "$OUT" &
READER=$!
echo "capturing to $OUT; stop with Ctrl-C" >&2
wait "$READER"
