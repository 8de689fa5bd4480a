"""The data contract: the data, split and base model every notebook of a run shares, declared once. Numbers
compare, and an artifact is reusable, only under one contract. A profile's ``shared:`` sets it (``-p k=v``
changes it for a run) and the runner hands it to every notebook as ``data_contract``; a notebook on the
teacher takes the teacher's (from its ``metadata.json``), any other run by hand the defaults below; a
``data_contract = {...}`` in a parameters cell changes it there (only as the teacher had it, on the teacher).
The ``csv:`` check needs only the standard library: the runner refuses a bad file in seconds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ..errors import DataError

DATASETS = "'rotten_tomatoes' (built in, offline), 'csv:<path>' or 'hf:<dataset name>'"
MODELS = "'minilm-l6' (packaged), 'tiny-bert' (random, for tests), a folder or a hub id"


class DataContract(BaseModel, extra="forbid", strict=True, frozen=True):
    """Each field's ``description`` says what it does and why its default is what it is."""

    dataset: str = Field("rotten_tomatoes", pattern=r"^(rotten_tomatoes|csv:.+|hf:.+)$", description=DATASETS)
    text_column: str = Field("text", min_length=1, description="the text column, for csv:/hf: data")
    label_column: str = Field("label", min_length=1, description="the label column (classes come from it)")
    group_column: str = Field("", description="rows that share it stay in one split ('': each alone)")
    val_frac: float = Field(0.1, gt=0, lt=1, description="share of groups (movies) held out: picks epochs")
    test_frac: float = Field(0.2, gt=0, lt=1, description="share of groups held out for the final test")
    seed: int = Field(42, ge=0, description="the split's seed; also every initialisation and batch order")
    max_train_samples: int = Field(1000, ge=0, description="cap on training rows, ~1 min by hand (0: all)")
    max_eval_samples: int = Field(300, ge=0, description="cap on validation and on test rows (0: all)")
    model: str = Field("minilm-l6", min_length=1, description=MODELS)
    pooling: Literal["mean", "cls"] = Field("mean", description="'mean' of the tokens: as MiniLM was trained")
    max_length: int = Field(64, ge=8, le=512, description="tokens per text: 64 cuts almost no snippet (00)")

    @model_validator(mode="after")
    def _room_to_train(self) -> DataContract:
        if (held_out := self.val_frac + self.test_frac) >= 0.9:
            raise ValueError(f"val_frac + test_frac = {held_out:.2f} leaves under 10% for training")
        return self


FIELDS = tuple(DataContract.model_fields)


def of(params: Mapping[str, Any]) -> dict[str, Any]:
    """The contract part of a notebook's parameters (or of an artifact's ``metadata["params"]``)."""
    return {k: params[k] for k in FIELDS if k in params}


def differences(theirs: Mapping[str, Any], ours: Mapping[str, Any], who: str) -> list[str]:
    """Every contract field where ``who``'s parameters differ from ours."""
    a, b = theirs, ours
    return [f"{k}: {who} used {a.get(k)!r}, here {b.get(k)!r}" for k in FIELDS if a.get(k) != b.get(k)]


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
        return path, raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw[:offset].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} (line {line}) "
            "cannot be decoded; re-save the file as UTF-8"
        ) from None


def data_problem(c: Mapping[str, Any]) -> str | None:
    """What makes a ``csv:`` dataset unusable (missing, a folder, not UTF-8, no header, missing columns, no
    rows, one class), or ``None``; other datasets are checked when a notebook loads them."""
    if not str(c.get("dataset", "")).startswith("csv:"):
        return None
    try:
        path, text = read_csv_text(c["dataset"][4:])
    except DataError as e:
        return str(e)
    if not text.strip():
        return f"{path} is empty: it needs a header row and at least two labelled rows"
    text_col, label_col = c.get("text_column", "text"), c.get("label_column", "label")
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = (text_col, label_col, c.get("group_column"))
        if missing := [x for x in columns if x and x not in reader.fieldnames]:
            return f"{path} lacks column(s) {missing}; it has {reader.fieldnames}: name the right columns"
        rows = [(r.get(text_col) or "").strip() and (r.get(label_col) or "").strip() for r in reader]
        labels = {label for label in rows if label}
    except csv.Error as e:
        return f"{path} is not a readable CSV: {e}"
    if not labels:
        return f"{path} has no usable rows (every row lacks a text or a label)"
    if len(labels) < 2:
        return f"{path} has only one class ({next(iter(labels))!r}): classification needs at least two"
    return None
