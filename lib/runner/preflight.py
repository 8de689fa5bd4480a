"""Deep checks before any notebook starts: the data file, the prerequisite artifacts and the device.

Parameter *values* are checked by :mod:`lib.runner.params`; here is what needs a look at the world: that a CSV
path is a readable UTF-8 file with the named columns and at least two classes, that an earlier run's artifact
is complete (its safetensors headers included) and was made from the same data settings, and that a device
asked for exists. Only the standard library (plus torch for the device question, through
:func:`lib.utils.resolve_device`), so ``python -m lib.runner --check`` answers in seconds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError, ParamError
from ..utils import resolve_device

# Parameters that define "the same data split and base model": numbers from two notebooks are only comparable,
# and an artifact only reusable, when these agree.
SPLIT_KEYS = (
    "dataset",
    "text_column",
    "label_column",
    "group_column",
    "val_frac",
    "test_frac",
    "seed",
    "max_train_samples",
    "max_eval_samples",
    "model",
    "pooling",
    "max_length",
)


def read_csv_text(path_text: str) -> tuple[Path, str]:
    """The CSV file's path and its text; a :class:`DataError` naming the problem and the fix otherwise."""
    path = Path(path_text).expanduser()
    where = f"dataset='csv:{path_text}'"
    if not path.exists():
        raise DataError(f"CSV file {path} does not exist: check the path in {where}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a CSV file: name the file itself in {where}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}): check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw[:offset].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} (line {line}) "
            "cannot be decoded; re-save the file as UTF-8"
        ) from None
    return path, text


def csv_problem(path_text: str, text_column: str, label_column: str, group_column: str = "") -> str | None:
    """What makes a CSV dataset unusable (missing, a folder, not UTF-8, no header, missing columns, no rows,
    one class), or ``None``. Reads the file once with the standard library: fast enough for a pre-flight."""
    try:
        path, text = read_csv_text(path_text)
    except DataError as e:
        return str(e)
    if not text.strip():
        return f"{path} is empty: it needs a header row and at least two labelled rows"
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
        wanted = [c for c in (text_column, label_column, group_column) if c]
        missing = [c for c in wanted if c not in columns]
        if missing:
            return (
                f"{path} lacks column(s) {missing}; it has {columns}. Set text_column / label_column / "
                "group_column to the right names."
            )
        labels = {
            row[label_column]
            for row in reader
            if (row.get(text_column) or "").strip() and (row.get(label_column) or "").strip()
        }
    except csv.Error as e:
        return f"{path} is not a readable CSV: {e}"
    if not labels:
        return f"{path} has no usable rows (every row lacks a text or a label)"
    if len(labels) < 2:
        return f"{path} has only one class ({next(iter(labels))!r}): classification needs at least two"
    return None


def data_problem(values: Mapping[str, Any]) -> str | None:
    """The data check for one notebook's resolved parameters (only ``csv:`` data can be checked offline, up
    front)."""
    dataset = values.get("dataset", "")
    if isinstance(dataset, str) and dataset.startswith("csv:"):
        return csv_problem(
            dataset[4:],
            values.get("text_column", "text"),
            values.get("label_column", "label"),
            values.get("group_column", ""),
        )
    return None


def split_differences(
    theirs: Mapping[str, Any], ours: Mapping[str, Any], producer: str, keys: Sequence[str] = SPLIT_KEYS
) -> list[str]:
    """Every data/model setting where ``producer``'s parameters differ from ours."""
    return [
        f"{k}: {producer} used {theirs.get(k)!r}, this notebook has {ours.get(k)!r}"
        for k in keys
        if k in ours and theirs.get(k) != ours.get(k)
    ]


def producer_params(run_dir: Path, producer: str) -> dict[str, Any] | None:
    """The parameters ``producer`` ran with in ``run_dir`` (its record), if it wrote one."""
    path = Path(run_dir) / "metrics" / f"{producer}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("params")
    except (OSError, json.JSONDecodeError):
        return None


def device_problem(device: str) -> str | None:
    """``cuda`` asked on a machine without a usable GPU: say so (and the fix) before any work."""
    try:
        resolve_device(device)
    except ParamError as e:
        return str(e)
    return None
