"""What legacytrace adds to a live event after its backend parsed it.

Backends report what their mechanism can see; some facts are cheaper or only possible
in user space, once per value rather than once per event:
- the command line of a task-context event's process, and of the process that owns the
  packet's socket (procinfo.CmdlineCache; the owner itself is found before, by
  legacytrace.owners, since the process filter needs it);
- a drop reason's name, when the backend gave its number (enum skb_drop_reason, from
  the running kernel's BTF: the numbers differ between releases);
- a return address's symbol ("ip_rcv_core+0x1a4"), when the backend gave a number
  (ftrace cannot symbolize in the kernel), from /proc/kallsyms.
The tables are read on first need, so a trace that never sees such a field pays nothing.
Only for live traces: a replayed capture may come from another kernel.
"""
from legacytrace.kernel import skb_drop_reason, symbols
from legacytrace.model import fields_getter

_fields_of = fields_getter("fields")


class Enricher(object):
    """A callable for trace.run's `enrich`: returns a batch of events with what it adds
    (the command lines of the task and of the owner make new events; names replace
    numbers in their `fields` dicts).

    `cmdlines` is a procinfo.CmdlineCache; `btf_path` the running kernel's BTF (or
    None); `kallsyms` a callable returning a symbols.Kallsyms (tests pass their own).
    """

    def __init__(self, cmdlines, btf_path, kallsyms=symbols.Kallsyms.read):
        self._cmdlines = cmdlines
        self._btf_path = btf_path
        self._read_kallsyms = kallsyms
        self._reasons = None
        self._kallsyms = None

    def __call__(self, events):
        """The events of a batch as they are shown (a list)."""
        events = self._cmdlines.enrich_all(events)
        for fields in map(_fields_of, events):
            if fields:
                reason = fields.get("reason")
                if type(reason) is int:
                    fields["reason"] = self.reason_name(reason)
                caller = fields.get("caller")
                if type(caller) is int:
                    fields["caller"] = self.symbol(caller)
        return events

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
