"""Record this host's HostFacts as JSON: `python tests/data/hosts/record.py "NOTE" > FILE.json`.

Run with the project's interpreter (e.g. .venv/bin/python) as root, on the host to record.
"""
import collections
import datetime
import json
import sys

from legacytrace.kernel.host import probe_host

facts = probe_host().to_dict()
record = collections.OrderedDict([("_note", "{} Recorded {} as uid 0 with tests/data/hosts/record.py."
                                   .format(sys.argv[1] if len(sys.argv) > 1 else "",
                                           datetime.date.today().isoformat()).strip())])
record.update(sorted(facts.items()))
print(json.dumps(record, indent=1))
