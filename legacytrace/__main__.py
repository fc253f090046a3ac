"""`python -m legacytrace`: the same as the `legacytrace` console script."""
from legacytrace.cli import main

main()
