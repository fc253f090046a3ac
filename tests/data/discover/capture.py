# Record prototypes (from BTF) and kallsyms types of the functions the bundled manifests name.
import json, sys
from legacytrace import manifest
from legacytrace.kernel import btf
btf_path, release, out = sys.argv[1], sys.argv[2], sys.argv[3]
kallsyms = sys.argv[4] if len(sys.argv) > 4 else None
extra = ["__netif_receive_skb_core", "kfree_skb", "bfifo_enqueue", "tcp_v4_send_check",
         "ip_rcv_finish_core", "__skb_try_recv_datagram"]
names = set(extra)
for n in manifest.bundled_names():
    for f in manifest.load(n).functions:
        names.update(v.name for v in f.variants)
b = btf.load(btf_path)
funcs = dict((n, p) for n, p in b.functions(names.__contains__))
data = {"release": release, "btf": btf_path,
        "functions": dict((n, funcs.get(n)) for n in sorted(names))}
if kallsyms:
    types = {}
    with open(kallsyms) as h:
        for line in h:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in names and len(parts) == 3:
                types[parts[2]] = parts[1]
    data["kallsyms"] = dict((n, types.get(n)) for n in sorted(names))
with open(out, "w") as h:
    json.dump(data, h, indent=1, sort_keys=True)
    h.write("\n")
