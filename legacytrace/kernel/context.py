"""Where a probe runs (task, softirq, hardirq, NMI), as each mechanism can learn it from the
kernel's own state at the probe (docs/kernel-facts.md, "The context of an event").

- stap asks the kernel: in_nmi(), hardirq_count(), in_serving_softirq() (preempt_count()).
- ftrace: the kernel records the context in each event's `common_flags` (TRACE_FLAG_*),
  which trace_pipe prints as the third flag character. 3.10 (upstream and EL7,
  kernel/trace/trace.c tracing_generic_entry_update) sets TRACE_FLAG_SOFTIRQ for any
  softirq count (pc & SOFTIRQ_MASK): a task that merely disabled bottom halves
  (dev_queue_xmit under rcu_read_lock_bh) shows `s` too (capture:
  tests/data/ftrace/kprobe-el7-all-traffic.trace); 5.10 and 6.1 set it only while a
  softirq is served (pc & SOFTIRQ_OFFSET). The change between is not pinned.
- bpf (bpftrace 0.17 reads no per-CPU variable without the kernel's data symbols, and a
  tracepoint program cannot see common_flags): a task runs on its own stack,
  [task->stack, task->stack + THREAD_SIZE); interrupts on x86_64 run on per-CPU
  interrupt stacks, softirqs too (do_softirq_own_stack), except those ksoftirqd runs on
  its own stack. The stack pointer is the kprobe's saved `sp`; at a tracepoint, the
  registers perf saved for it (perf_fetch_caller_regs: sp is the frame of the
  perf_trace_* function, on the stack in use), whose address perf_trace_run_bpf_submit
  (kernel/events/core.c, 4.7+) puts in the first 8 bytes of the record the program gets.
"""

#: x86_64 task stacks: THREAD_SIZE = PAGE_SIZE << THREAD_SIZE_ORDER, the order 2 from 3.15
#: (arch/x86/include/asm/page_64_types.h; 1 before, so 3.10 has 8 KiB), plus KASAN_STACK_ORDER
#: on a KASAN build (32 KiB: not handled). The bpf backend needs 4.9.
THREAD_SIZE = 16384
#: task_struct.flags of a kernel thread (include/linux/sched.h, the same from 3.10 to 6.18):
#: ksoftirqd, whose softirqs run on its own stack.
PF_KTHREAD = 0x00200000
#: trace_entry.common_flags (kernel/trace/trace.h, enum trace_flag_type): below HARDIRQ are
#: IRQS_OFF 0x01, IRQS_NOSUPPORT 0x02 and NEED_RESCHED 0x04 (3.10's whole set below HARDIRQ
#: 0x08 and SOFTIRQ 0x10); later kernels add PREEMPT_RESCHED 0x20, NMI 0x40 and BH_OFF 0x80
#: (6.1 prints it as `b`). Every interrupt-context event has a flags value of at least this;
#: some task events too (a pending reschedule, bottom halves disabled).
INTERRUPT_FLAGS_MIN = 0x08
