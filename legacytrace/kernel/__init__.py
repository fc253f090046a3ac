"""What legacytrace knows about kernels, one module per kernel thing (as drgn's
helpers/linux): release names, features by version, host facts, BTF, struct layouts and
the field paths through them, symbols, tracefs, tracepoints, drop reasons, the sk_buff at
each function, x86_64.

docs/kernel-facts.md says what each fact is based on; code that depends on a kernel
change names the version or commit beside it.
"""
