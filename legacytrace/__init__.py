"""legacytrace: packet flows through kernel functions, attributed to processes, on 3.10 and later."""

__version__ = "0.1.0"
