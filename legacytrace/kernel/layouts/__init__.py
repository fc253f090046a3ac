"""Struct layouts of known kernel builds (data files read with pkgutil.get_data)."""
