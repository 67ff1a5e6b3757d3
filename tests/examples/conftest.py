"""Put ``examples/`` (the scripts' shared modules) and this folder (``example_runner``) on ``sys.path``.

The examples are scripts that import their shared modules (``epoch_loop``, ``example_flags``, ...) as
top-level modules, as ``python examples/x.py`` does; the in-process tests import them the same way.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE.parents[1] / "examples", HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
