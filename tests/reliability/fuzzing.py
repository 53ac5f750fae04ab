"""What the property-based reliability tests share: their hypothesis settings (a fixed,
derandomised set of examples in CI, so a new find never turns an unrelated change red;
PLANTID_FUZZ_EXAMPLES=5000 fuzzes deeper with fresh draws) and the count of inputs each
test tried, written to the file PLANTID_FUZZ_COUNTS names (bench/bench_reliability.py)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings


def fuzz_settings(default_examples: int = 150) -> settings:
    return settings(
        max_examples=int(os.environ.get("PLANTID_FUZZ_EXAMPLES", default_examples)),
        deadline=None,
        derandomize="PLANTID_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def write_counts(tried: Counter, prefix: str = "") -> None:
    """Add `tried` (name -> inputs) to the PLANTID_FUZZ_COUNTS file, when one is named."""
    target = os.environ.get("PLANTID_FUZZ_COUNTS")
    if target:
        p = Path(target)
        old = json.loads(p.read_text()) if p.exists() else {}
        old.update({f"{prefix}{k}": v for k, v in tried.items()})
        p.write_text(json.dumps(old, indent=1))
