"""The x86_64 calling convention, as kprobes see it at a function's first instruction.

The first six integer or pointer arguments are in registers (System V AMD64 ABI), in
the order of ARG_REGISTERS, where kprobe_events reads them as `%di` ... (3.10 needs the
`%` and refuses `%rdi`; docs/kernel-facts.md, "kprobe_events: syntax and rules"). Later
arguments are on the stack, which no backend reads: a manifest position is 1 to 6. At
entry the return address is the word on top of the stack (`+0($stack)`, `*(reg("sp"))`).
"""
#: kprobe_events names of the registers of arguments 1 to 6.
ARG_REGISTERS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")
#: Arguments a probe can read: those passed in registers.
ARGS_IN_REGISTERS = len(ARG_REGISTERS)
