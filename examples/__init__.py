"""Examples that ship with tunerspec (not part of the installed distribution)."""
