"""Collection rules for the whole repository (tests/ and the doctests in src/)."""

import importlib.util

# kooptrain.lightning needs the optional Lightning extra; without it, skip its doctests
collect_ignore = [] if importlib.util.find_spec("lightning") else ["src/kooptrain/lightning.py"]
