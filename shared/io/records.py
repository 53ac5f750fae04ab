"""The image record: the one schema every phase reads and writes (JSON Lines, one
image a line), its validation with per-field rejection reasons, and JSONL I/O.

Species names (`taxon`) are the class labels, so two spellings of one name must not
become two classes. `parse_record` puts every name in one canonical form
(`normalize_taxon`) and keeps the name as the catalogue wrote it in `taxon_raw` when
the two differ:

1. Invisible characters are removed: Unicode format characters (category Cf: zero-width
   space U+200B, non-joiner U+200C, joiner U+200D, word joiner U+2060, BOM / zero-width
   no-break space U+FEFF, soft hyphen U+00AD, bidirectional marks and overrides) and
   control characters that are not whitespace.
2. Unicode NFC: a decomposed "e" + U+0301 becomes "é".
3. Whitespace: every run of Unicode white space (space, tab, line breaks, NBSP U+00A0,
   U+2000-U+200A, U+202F, U+205F, ideographic space U+3000...) becomes one ASCII space;
   leading and trailing space is dropped.
4. Hybrid marks: the multiplication sign "×" is a word of its own ("Mentha ×piperita"
   -> "Mentha × piperita", "×Cupressocyparis" -> "× Cupressocyparis"); a
   stand-alone "x" or "X" followed by another word is that sign ("Quercus x hispanica" ->
   "Quercus × hispanica"). An "x" inside a word is left alone (Xanthium).
5. Case: the first word (the genus, or the higher-rank name) is capitalised, the word
   after a leading "×" too; every other word is lower case (specific and infraspecific
   epithets, rank markers "subsp.", "var.", "f.", "sp.", "cf."), so
   "QUERCUS ILEX subsp. BALLOTA" -> "Quercus ilex subsp. ballota". Exceptions, each
   capitalised word by word: a cultivar epithet in single quotes ("Prunus 'Kanzan'";
   typographic quotes become ASCII '), a word in parentheses (a subgenus), and the first
   word after "×" in a hybrid formula ("Salix alba × Salix fragilis", i.e. when
   "×" comes after the epithet and is followed by two or more words). Author
   citations are not recognised: "Rosa canina L." becomes "Rosa canina l.".

The form is idempotent, and no other spelling is rewritten ("ssp." stays "ssp.")."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.io.atomic import atomic_open

REQUIRED_FIELDS = ("image_id", "image_url", "taxon", "region", "license")
OPTIONAL_FIELDS = ("observation_id", "source", "width", "height")
# Set by parse_record, only when the catalogue's name differs from its canonical form.
DERIVED_FIELDS = ("taxon_raw",)
UTF8_BOM = b"\xef\xbb\xbf"
HYBRID = "\u00d7"  # the multiplication sign, not the letter x


class RecordError(ValueError):
    """A record is malformed; `reason` is a short stable code, `field` the culprit
    ("<line>" when the whole line is at fault), `byte_offset` where in the file, if known."""

    def __init__(self, reason: str, field: str, detail: str = "", byte_offset: int | None = None):
        self.reason, self.field, self.byte_offset = reason, field, byte_offset
        super().__init__(f"{reason}: field '{field}'" + (f" ({detail})" if detail else ""))


class NotUtf8Error(ValueError):
    """A JSONL line holds bytes that are not UTF-8; `byte_offset` is the first bad byte's
    position in the file (0-based, counting a leading BOM)."""

    def __init__(self, line: int, byte_offset: int, bad: bytes, reason: str):
        self.line, self.byte_offset, self.bad = line, byte_offset, bad
        super().__init__(f"line {line}: byte {bad.hex()} at byte offset {byte_offset} is not UTF-8 ({reason})")


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
    # The catalogue's spelling of `taxon`, only when normalize_taxon changed it.
    taxon_raw: str | None = None
    # Fields added by later phases (cache: sha256, cache_path; split: split).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # a plain comprehension: dataclasses.asdict deep-copies and was a third of ingest's time
        d = {k: getattr(self, k) for k in _RECORD_FIELDS if getattr(self, k) is not None}
        d.update(self.extra)
        return d


_RECORD_FIELDS = tuple(f.name for f in fields(Record) if f.name != "extra")


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


def _invisible(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat == "Cf" or (cat == "Cc" and not ch.isspace())


def _capitalised(word: str) -> str:
    """First letter upper (title) case, the rest lower; leading quotes or brackets kept."""
    for i, ch in enumerate(word):
        if ch.isalpha():
            # str.capitalize title-cases the first letter ("\u00df" -> "Ss"), which stays put on a second pass
            return word[:i] + word[i:].capitalize()
    return word


def normalize_taxon(name: str) -> str:
    """The canonical form of a species name (policy in the module docstring); "" if
    nothing visible is left."""
    s = "".join(ch for ch in name if not _invisible(ch))
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\u2018", "'").replace("\u2019", "'").replace(HYBRID, f" {HYBRID} ")
    words = s.split()  # no argument: splits on any run of Unicode white space (NBSP included)
    words = [HYBRID if w in ("x", "X") and i + 1 < len(words) else w for i, w in enumerate(words)]
    out: list[str] = []
    in_quotes = False
    for i, w in enumerate(words):
        genus_like = i == 0 or (i == 1 and words[0] == HYBRID)
        formula = i >= 3 and words[i - 1] == HYBRID and len(words) - i >= 2
        if in_quotes or w.startswith("'"):
            in_quotes = not (w.endswith("'") and (len(w) > 1 or in_quotes))
            out.append(_capitalised(w))
        elif genus_like or formula or w.startswith("("):
            out.append(_capitalised(w))
        else:
            out.append(w.lower())
    # case mapping can yield decomposed sequences ("\u0130".lower() is "i" + U+0307)
    return unicodedata.normalize("NFC", " ".join(out))


def _taxon(raw: dict) -> tuple[str, str | None]:
    """(canonical name, the catalogue's spelling if it differs)."""
    checked = _text(raw, "taxon", True)
    name = normalize_taxon(checked)
    if not name:
        raise RecordError("missing_field", "taxon", "nothing left once invisible characters are removed")
    original = raw["taxon"] if isinstance(raw["taxon"], str) else checked
    kept = raw.get("taxon_raw")  # a record ingested before already holds the catalogue's spelling
    if isinstance(kept, str) and kept:
        return name, kept
    return name, (original if original != name else None)


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
    image_id = _text(raw, "image_id", True)
    image_url = _text(raw, "image_url", True)
    taxon, taxon_raw = _taxon(raw)
    rec = Record(
        image_id=image_id,
        image_url=image_url,
        taxon=taxon,
        region=_text(raw, "region", True),
        license=_text(raw, "license", True),
        observation_id=_text(raw, "observation_id", False),
        source=_text(raw, "source", False),
        width=_dim(raw, "width"),
        height=_dim(raw, "height"),
        taxon_raw=taxon_raw,
    )
    known = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS) | set(DERIVED_FIELDS)
    rec.extra = {k: v for k, v in raw.items() if k not in known}
    return rec


class LineTooLongError(ValueError):
    """A JSONL line longer than the cap; it was skipped unread (never held in memory)."""

    def __init__(self, line: int, byte_offset: int, length: int, cap: int):
        self.line, self.byte_offset, self.length = line, byte_offset, length
        super().__init__(f"line {line} at byte offset {byte_offset}: {length} bytes, over the cap of {cap}")


def _skip_line(f: Any, chunk: bytes) -> tuple[int, int]:
    """Read on to the end of the line `chunk` began, 1 MiB at a time: (bytes read in all, the
    line's length without its newline)."""
    n = len(chunk)
    while chunk and not chunk.endswith(b"\n"):
        chunk = f.readline(1 << 20)
        n += len(chunk)
    return n, n - (1 if chunk.endswith(b"\n") else 0)


def read_jsonl(path: str | os.PathLike, max_line_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed JSON) for every non-blank line. A line that is not
    JSON yields (line_number, JSONDecodeError), one that is not UTF-8 (line_number,
    NotUtf8Error), one over `max_line_bytes` (newline excluded) (line_number,
    LineTooLongError), so callers can reject it by line and go on with the others."""
    # Bytes, split at b"\n" only: JSONL lines end at \n, so line numbers match what editors
    # show even when a record carries a stray \r (CRLF files still parse: \r is JSON
    # whitespace), and the offset of a bad byte can be named. Each line is decoded
    # strictly: a replaced byte would have become part of a species name, a new class.
    offset = 0
    # readline(limit): a 50 MB line is never read whole; the cap leaves room for the newline
    limit = max_line_bytes + 2 if max_line_bytes else -1
    with open(path, "rb") as f:
        for n, raw in enumerate(iter(lambda: f.readline(limit), b""), 1):
            start = offset
            if max_line_bytes and len(raw.rstrip(b"\r\n")) > max_line_bytes:
                read, length = _skip_line(f, raw)
                offset += read
                yield n, LineTooLongError(n, start, length, max_line_bytes)
                continue
            offset += len(raw)
            if n == 1 and raw.startswith(UTF8_BOM):  # written by some Windows tools; not part of the record
                raw, start = raw[len(UTF8_BOM) :], start + len(UTF8_BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, NotUtf8Error(n, start + e.start, raw[e.start : e.start + 1], e.reason)
                continue
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
        if not isinstance(obj, dict):  # not JSON, not UTF-8, or not an object
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
