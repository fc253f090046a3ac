"""Functions in legacytrace/ and backends/ stay short: each under FUNCTION_MAX lines.

A long function mixes steps that are easier to read, test and change apart. The count is
of a function's lines from its `def` (decorators included) to its last, docstring and
nested functions included. `python tests/test_function_length.py` prints the longest.
"""
import ast
import os
import sys

import pytest

FUNCTION_MAX = 50
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("legacytrace", "backends")


def functions():
    """(lines, "path:line name") of every function and method under FOLDERS."""
    found = []
    for folder in FOLDERS:
        for parent, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(parent, name)
                with open(path) as handle:
                    tree = ast.parse(handle.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                        found.append((node.end_lineno - first + 1, "{}:{} {}".format(
                            os.path.relpath(path, ROOT), node.lineno, node.name)))
    return sorted(found, reverse=True)


@pytest.mark.skipif(sys.version_info < (3, 8), reason="ast records end lines from 3.8 "
                    "(the 3.11 run of the unit tests checks)")
def test_every_function_is_shorter_than_the_limit():
    long = ["{} ({} lines)".format(where, lines) for lines, where in functions()
            if lines >= FUNCTION_MAX]
    assert not long, "functions of {} lines or more: {}".format(FUNCTION_MAX, ", ".join(long))


if __name__ == "__main__":
    for lines, where in functions()[:int(sys.argv[1]) if sys.argv[1:] else 5]:
        print("{:4d}  {}".format(lines, where))
