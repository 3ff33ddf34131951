"""Names of the files a run folder holds (minimal version: the lead merges it with the full one)."""

from __future__ import annotations

import re
from pathlib import Path


def ranks_path_for(metrics_path: str | Path) -> Path:
    """The per-user ranks file that belongs to a metrics file, in the same folder:
    ``test_metrics.json`` -> ``ranks.npz``, ``test-<stamp>.json`` -> ``ranks-<stamp>.npz``."""
    p = Path(metrics_path)
    if p.name == "test_metrics.json":
        return p.with_name("ranks.npz")
    m = re.fullmatch(r"test-(.+)\.json", p.name)
    if m:
        return p.with_name(f"ranks-{m.group(1)}.npz")
    raise ValueError(f"'{p}': expected a metrics file named test_metrics.json or test-<stamp>.json")
