"""Record what the bpf backend asks of a kernel's BTF, for tests/test_bpf_fields.py.

    .venv/bin/python tests/data/bpf/capture_types.py BTF_FILE RELEASE > tests/data/bpf/types-RELEASE.json

Runs bpf_build.field_extra on every path of FIELDS and bpf_build.peek_plan through a recording
bpf_build.Types over the real BTF file, and writes each question with the answer (or the
BTFError's text) as JSON. The tests replay the answers: builds are then typed exactly as
on that kernel, without its 4 MB BTF in the repository.
"""
import collections
import json
import sys

from legacytrace.kernel import btf
from legacytrace.backends.bpf import build as bpf_build
from legacytrace.errors import UsageError
from legacytrace.model import Probe

#: (field, path) pairs the tests build; the bundled manifests' fields are among them.
FIELDS = [
    ("mark", "skb.mark"), ("len", "skb.len"), ("dev", "skb.dev.name"),
    ("ifindex", "skb.dev.ifindex"), ("devp", "skb.dev"), ("tstamp", "skb.tstamp"),
    ("gso", "skb_shinfo(skb).gso_size"), ("frags", "skb_shinfo(skb).nr_frags"),
    ("state", "sk.__sk_common.skc_state"), ("family", "sk.__sk_common.skc_family"),
    ("dport", "sk.__sk_common.skc_dport"), ("prio", "skb.priority"),
    ("missing", "skb.no_such_member"), ("deep", "skb.dev.no_such_member"),
    ("whole", "sk.__sk_common"), ("through", "skb.len.value"),
]
ROOTS = {"skb": "$skb", "sk": "$sk", "skb_shinfo(skb)": bpf_build._SHINFO}


class Recording(bpf_build.Types):
    def __init__(self, blob):
        super(Recording, self).__init__(blob)
        self.answers = collections.OrderedDict(
            [("member", collections.OrderedDict()), ("signed", collections.OrderedDict()),
             ("enum", collections.OrderedDict())])

    def member(self, struct_name, path):
        key = "{} {}".format(struct_name, path)
        try:
            answer = super(Recording, self).member(struct_name, path)
        except btf.BTFError as err:
            self.answers["member"][key] = {"error": str(err)}
            raise
        self.answers["member"][key] = [answer.ctype, answer.size]
        return answer

    def signed(self, ctype):
        answer = self.answers["signed"][ctype] = super(Recording, self).signed(ctype)
        return answer

    def enum(self, name):
        answer = self.answers["enum"][name] = super(Recording, self).enum(name)
        return answer


def main(path, release):
    types = Recording(btf.load(path))
    for field, path_ in FIELDS:
        try:
            bpf_build.field_extra("capture", field, path_, ROOTS, types)
        except UsageError:
            pass
    bpf_build.peek_plan(Probe("tcp_sendmsg", None, 1, args={"msg": 2},
                        peek={"arg": "msg", "bytes": 64}), types)
    json.dump(dict(release=release, **types.answers), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
