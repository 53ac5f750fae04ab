"""The image record: the one schema every phase reads and writes (JSON Lines, one
image a line), its validation with per-field rejection reasons, and JSONL I/O."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from shared.atomic import atomic_open

REQUIRED_FIELDS = ("image_id", "image_url", "taxon", "region", "license")
OPTIONAL_FIELDS = ("observation_id", "source", "width", "height")


class RecordError(ValueError):
    """A record is malformed; `reason` is a short stable code, `field` the culprit."""

    def __init__(self, reason: str, field: str, detail: str = ""):
        self.reason, self.field = reason, field
        super().__init__(f"{reason}: field '{field}'" + (f" ({detail})" if detail else ""))


@dataclass
class Record:
    image_id: str
    image_url: str
    taxon: str
    region: str
    license: str
    observation_id: str | None = None
    source: str | None = None
    width: int | None = None
    height: int | None = None
    # Fields added by later phases (cache: sha256, cache_path; split: split).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        d.update(self.extra)
        return d


def _text(raw: dict, name: str, required: bool) -> str | None:
    if name not in raw or raw[name] is None or raw[name] == "":
        if required:
            raise RecordError("missing_field", name)
        return None
    v = raw[name]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RecordError("malformed_field", name, f"expected text, got {type(v).__name__}")
    v = str(v).strip()
    if required and not v:
        raise RecordError("missing_field", name)
    if "\x00" in v or len(v) > 4096:
        raise RecordError("malformed_field", name, "control characters or too long")
    try:  # a JSON escape like "\\ud800" decodes to a lone surrogate, which no UTF-8 file can hold
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError("malformed_field", name, "not valid Unicode (lone surrogate)") from None
    return v or None


def _dim(raw: dict, name: str) -> int | None:
    v = raw.get(name)
    if v is None or v == "":
        return None
    try:
        if isinstance(v, bool):
            raise ValueError
        iv = int(v)
        if iv != float(v) or iv <= 0:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise RecordError("malformed_field", name, f"expected a positive integer, got {v!r}") from None
    return iv


def parse_record(raw: Any) -> Record:
    """Validate one raw record (a dict); raise RecordError naming the bad field."""
    if not isinstance(raw, dict):
        raise RecordError("not_an_object", "<record>", f"got {type(raw).__name__}")
    rec = Record(
        image_id=_text(raw, "image_id", True),
        image_url=_text(raw, "image_url", True),
        taxon=_text(raw, "taxon", True),
        region=_text(raw, "region", True),
        license=_text(raw, "license", True),
        observation_id=_text(raw, "observation_id", False),
        source=_text(raw, "source", False),
        width=_dim(raw, "width"),
        height=_dim(raw, "height"),
    )
    known = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
    rec.extra = {k: v for k, v in raw.items() if k not in known}
    return rec


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed JSON) for every non-blank line; a line that is not
    JSON yields (line_number, JSONDecodeError) so callers can reject it by line."""
    # newline="\n": JSONL lines end at \n only, so line numbers match what editors show
    # even when a record carries a stray \r (CRLF files still parse: \r is JSON whitespace).
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                obj = e
            except (ValueError, RecursionError) as e:  # a 5000-digit number; nesting too deep to parse
                obj = json.JSONDecodeError(f"{type(e).__name__}: {str(e)[:120]}", line[:80], 0)
            yield n, obj


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Load a JSONL written by this project; any bad line is an error naming file and line."""
    out = []
    for n, obj in read_jsonl(path):
        if isinstance(obj, json.JSONDecodeError) or not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: not a JSON object ({obj})")
        out.append(obj)
    return out


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict | Record]) -> int:
    """Write rows atomically; return how many were written."""
    n = 0
    with atomic_open(Path(path), "w", encoding="utf-8") as f:
        for r in rows:
            d = r.to_dict() if isinstance(r, Record) else r
            f.write(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n
