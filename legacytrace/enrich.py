"""What legacytrace adds to a live event after its backend parsed it.

Backends report what their mechanism can see; some facts are cheaper or only possible
in user space, once per value rather than once per event:
- the command line of a task-context event's process (procinfo.CmdlineCache);
- the process that owns the packet's socket (legacytrace.owners), and with it the
  process filter's verdict, which needs the owner of a received packet;
- a drop reason's name, when the backend gave its number (enum skb_drop_reason, from
  the running kernel's BTF: the numbers differ between releases);
- a return address's symbol ("ip_rcv_core+0x1a4"), when the backend gave a number
  (ftrace cannot symbolize in the kernel), from /proc/kallsyms.
The tables are read on first need, so a trace that never sees such a field pays nothing.
Only for live traces: a replayed capture may come from another kernel.
"""
from legacytrace.kernel import skb_drop_reason, symbols


class Enricher(object):
    """A callable for trace.run's `enrich`: returns the event with what it adds (the
    command line and the owner make a new event; names replace numbers in its `fields`
    dict), or None for an event the process filter does not keep.

    `cmdlines` is a procinfo.CmdlineCache; `btf_path` the running kernel's BTF (or
    None); `kallsyms` a callable returning a symbols.Kallsyms (tests pass their own);
    `owners` an owners.Owners (None: no owner); `keep(ev)` the process filter's verdict
    on the event with its owner (None: every event).
    """

    def __init__(self, cmdlines, btf_path, kallsyms=symbols.Kallsyms.read, owners=None,
                 keep=None):
        self._cmdlines = cmdlines
        self._btf_path = btf_path
        self._read_kallsyms = kallsyms
        self._owners = owners
        self._keep = keep
        self._reasons = None
        self._kallsyms = None

    def __call__(self, ev):
        ev = self._cmdlines.enrich(ev)
        if self._owners is not None:
            ev = self._owners(ev)
        if self._keep is not None and not self._keep(ev):
            return None
        fields = ev.fields
        if fields:
            reason = fields.get("reason")
            if type(reason) is int:
                fields["reason"] = self.reason_name(reason)
            caller = fields.get("caller")
            if type(caller) is int:
                fields["caller"] = self.symbol(caller)
        return ev

    def reason_name(self, value):
        """The short name of drop reason `value`, or the number when the kernel has no name."""
        if self._reasons is None:
            self._reasons = skb_drop_reason.load(self._btf_path)
        return self._reasons.get(value, value)

    def symbol(self, address):
        """"function+0xoffset" of a kernel text address, or its hex when unknown."""
        if self._kallsyms is None:
            self._kallsyms = self._read_kallsyms()
        return self._kallsyms.name(address) or "{:#x}".format(address)
