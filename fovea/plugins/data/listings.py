"""The text files that name clips and captions for the ``videos`` source: a clip manifest (``.csv`` /
``.jsonl``: one clip per row, by ``path`` or ``url``, with an optional caption and time window), a caption
index at the data root (``captions.jsonl`` / ``captions.csv``) and sidecar ``NAME.txt`` captions. A malformed
file is one ``FoveaError`` naming the file, the line and the fix."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fovea.core.errors import FoveaError

CAPTION_INDEXES = ("captions.jsonl", "captions.csv")   # at the data root; one of them
JSONL_FIX = 'each line must be a JSON object like {"path": "clip.mp4", "caption": "a dog runs"}'
CSV_FIX = "the first row must name the columns path and caption, and every row give both"
MANIFEST_FIX = ("each row names its video by 'path' or 'url', optionally a 'caption' and 'start'/'end' in seconds "
                "(start < end)")


@dataclass(frozen=True)
class ManifestEntry:
    """One clip of a manifest: its video (a local path or a URL), caption, and time window in seconds."""

    video: str
    caption: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def source(self) -> str:
        """What the cache records as the clip's source: the video, and its window as a media fragment."""
        if self.start is None and self.end is None:
            return self.video
        return f"{self.video}#t={_seconds(self.start or 0.0)},{'' if self.end is None else _seconds(self.end)}"


def _seconds(value: float) -> str:
    return f"{value:g}"


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """The clips a ``.csv`` / ``.jsonl`` manifest lists, in its order; a ``FoveaError`` naming the file and
    line of the first malformed row, or when it is missing or lists no clip."""
    from fovea.core.files import is_url

    if manifest.suffix not in (".csv", ".jsonl"):
        raise FoveaError(f"data.manifest = '{manifest}' is neither a .csv nor a .jsonl file; {MANIFEST_FIX}")
    if not manifest.is_file():
        raise FoveaError(f"no clip manifest at data.manifest = '{manifest}'; point it at your .csv or .jsonl file")
    rows = _manifest_jsonl_rows(manifest) if manifest.suffix == ".jsonl" else _manifest_csv_rows(manifest)
    base = manifest.resolve().parent
    entries = []
    for line, row in rows:
        where = f"{manifest}, line {line}"
        given = [key for key in ("path", "url") if row.get(key) not in (None, "")]
        if len(given) != 1:
            raise FoveaError(f"{where}: {'both path and url' if given else 'no path or url'}; {MANIFEST_FIX}")
        video = str(row[given[0]])
        if given[0] == "url" and not is_url(video):
            raise FoveaError(f"{where}: url '{video[:80]}' is not a URL (scheme://…); name local files by 'path'")
        if given[0] == "path" and not is_url(video):
            video = str(base / Path(video).expanduser())   # an absolute path replaces the base
        caption = row.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise FoveaError(f"{where}: caption is {json.dumps(caption)[:40]}, not a string; {MANIFEST_FIX}")
        start, end = (_manifest_seconds(row.get(key), key, where) for key in ("start", "end"))
        if start is not None and end is not None and end <= start:
            raise FoveaError(f"{where}: end ({end:g} s) is not after start ({start:g} s); {MANIFEST_FIX}")
        entries.append(ManifestEntry(video, (caption or "").strip() or None, start, end))
    if not entries:
        raise FoveaError(f"the clip manifest {manifest} lists no clip; {MANIFEST_FIX}")
    return entries


def _manifest_seconds(value, key: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise FoveaError(f"{where}: {key} = {json.dumps(value)[:40]} is not a number of seconds >= 0; {MANIFEST_FIX}")
    return seconds


def _manifest_jsonl_rows(manifest: Path):
    yield from _jsonl_objects(manifest, MANIFEST_FIX)


def _jsonl_objects(path: Path, fix: str):
    """(line number, object) of each non-blank line of a JSON-lines file; one clear error for a bad line."""
    text = _utf8(path.read_bytes(), path, "save it as UTF-8")
    for number, line in enumerate(text.split("\n"), 1):   # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FoveaError(f"{path}, line {number}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(row, dict):
            raise FoveaError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object; {fix}")
        yield number, row


def _manifest_csv_rows(manifest: Path):
    reader = csv.DictReader(io.StringIO(_utf8(manifest.read_bytes(), manifest, "save it as UTF-8"), newline=""))
    try:
        columns = reader.fieldnames or []
        if "path" not in columns and "url" not in columns:
            raise FoveaError(f"{manifest}, line 1: no column 'path' or 'url' (the header row names "
                             f"{', '.join(repr(c) for c in columns) or 'nothing'}); {MANIFEST_FIX}")
        for row in reader:
            if None in row.values() or None in row:
                raise FoveaError(f"{manifest}, line {reader.line_num}: not as many fields as the header row; "
                                 f"{MANIFEST_FIX}")
            yield reader.line_num, row
    except csv.Error as exc:
        raise FoveaError(f"{manifest}, line {reader.line_num}: not valid CSV ({exc}); {MANIFEST_FIX}") from None


# --- captions ------------------------------------------------------------------------------------

def read_sidecar_caption(video: Path) -> str | None:
    """The caption in ``NAME.txt`` beside ``video`` (UTF-8, stripped), or None when there is none or it is empty."""
    sidecar = video.with_suffix(".txt")
    try:
        data = sidecar.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return _utf8(data, sidecar, "save it as UTF-8 text").strip() or None


def read_caption_index(root: Path, files: list[Path]) -> dict[Path, str]:
    """Captions of ``files`` from the index at ``root`` (``captions.jsonl`` or ``captions.csv``; {} without one).

    Entries naming no file of ``files`` are left out with one warning on stderr; a malformed index, or
    two captions for one file, is a ``FoveaError`` naming the file and the line.
    """
    found = [root / name for name in CAPTION_INDEXES if (root / name).is_file()]
    if not found:
        return {}
    if len(found) > 1:
        raise FoveaError(f"both {found[0]} and {found[1]} give captions; keep one of them")
    index = found[0]
    entries = _jsonl_entries(index) if index.suffix == ".jsonl" else _csv_entries(index)
    by_name = {os.path.abspath(file): file for file in files}
    seen: dict[Path, tuple[int, str]] = {}   # file -> (line, caption) of its first entry
    unknown: list[str] = []
    for line, name, caption in entries:
        file = by_name.get(os.path.abspath(root / name))   # an absolute name replaces the root
        if file is None:
            unknown.append(name)
            continue
        first = seen.setdefault(file, (line, caption.strip()))
        if first[1] != caption.strip():
            raise FoveaError(f"{index}, line {line}: a second caption for '{name}' (the first is on line "
                             f"{first[0]}); keep one")
    if unknown:
        print(f"warning: {index} gives captions for {len(unknown)} file(s) that are not among the videos under "
              f"{root} (the first: '{unknown[0]}'); their captions are not used", file=sys.stderr)
    return {file: caption for file, (_, caption) in seen.items() if caption}


def _jsonl_entries(index: Path):
    """(line number, path, caption) of each non-blank line of a ``captions.jsonl``."""
    for number, entry in _jsonl_objects(index, JSONL_FIX):
        for key in ("path", "caption"):
            if key not in entry:
                raise FoveaError(f"{index}, line {number}: no '{key}' key; {JSONL_FIX}")
            if not isinstance(entry[key], str):
                raise FoveaError(f"{index}, line {number}: '{key}' is {json.dumps(entry[key])[:40]}, not a "
                                 f"string; {JSONL_FIX}")
        yield number, entry["path"], entry["caption"]


def _csv_entries(index: Path):
    """(line number, path, caption) of each row of a ``captions.csv`` (quoted fields may span lines)."""
    reader = csv.DictReader(io.StringIO(_utf8(index.read_bytes(), index, "save it as UTF-8"), newline=""))
    try:
        columns = reader.fieldnames or []
        missing = [column for column in ("path", "caption") if column not in columns]
        if missing:
            raise FoveaError(f"{index}, line 1: no column {' or '.join(repr(m) for m in missing)} (the header row "
                             f"names {', '.join(repr(c) for c in columns) or 'nothing'}); {CSV_FIX}")
        for row in reader:
            if row["path"] is None or row["caption"] is None:
                raise FoveaError(f"{index}, line {reader.line_num}: fewer fields than the header row; {CSV_FIX}")
            yield reader.line_num, row["path"], row["caption"]
    except csv.Error as exc:
        raise FoveaError(f"{index}, line {reader.line_num}: not valid CSV ({exc}); {CSV_FIX}") from None


def _utf8(data: bytes, path: Path, fix: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped); a ``FoveaError`` naming the line otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FoveaError(f"{path}, line {line}: not UTF-8 text (byte {exc.start}); {fix}") from None
