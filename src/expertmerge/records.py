"""Result records as files: the kinds a pipeline job writes (per-image ODE NLL, per-run VLB, FID,
predicted VLB), each checked when read, naming the file: its columns there, its numbers finite, and no
measurement twice (a test image, a run or a sampler's FID of one eta), since a file given twice, or a copy
of it, would be pooled as more data and shrink the error bars. `expertmerge.tables` builds the tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ("eta_label", "eta")  # eta empty (NaN): a row off the eta axis (an expert beyond the pair, alone)


@dataclass(frozen=True)
class RecordKind:
    what: str             # what a file of these records is, for messages
    identity: tuple       # the columns that name one measurement
    numbers: tuple        # columns that must hold finite numbers
    optional: tuple = ()  # finite numbers where present


# The kinds of result records, told by their value column. Two records of one kind with the same identity
# are the same measurement: pooled twice, it would shrink a standard error or repeat a row.
RECORD_KINDS = {
    "bpd": RecordKind("an NLL shard", ("eta_label", "image"), ("image", "bpd", "nfe"), ("batch_size",)),
    "vlb": RecordKind("VLB runs", ("eta_label", "run"), ("run", "vlb"),
                      ("prior", "reconstruction", "diffusion", "batch_size")),
    "fid": RecordKind("an FID record", ("eta_label", "sampler"), ("fid", "nfe_mean"), ("fid_spread", "batch_size")),
    "predicted_vlb": RecordKind("predicted VLBs", ("eta_label",), ("predicted_vlb",),
                                ("predicted_prior", "predicted_reconstruction", "predicted_diffusion")),
}
IDENTITY_NAMES = {"eta_label": "eta"}


def record_kind(columns) -> RecordKind | None:
    """The kind of records holding (or asked for) `columns`; None for others (e.g. per-eta summaries)."""
    return next((kind for column, kind in RECORD_KINDS.items() if column in columns), None)


def read_records(*paths) -> pd.DataFrame:
    """Concatenate records from .csv / .json files (JSON: a list of objects), each checked as its kind, and
    refuse a measurement given twice, in one file or across files (a file given twice, or a copy of it)."""
    frames = [_read_file(Path(path)) for path in paths]
    kinds = {path: record_kind(frame.columns) for path, frame in zip(paths, frames)}
    if len({kind for kind in kinds.values()}) > 1:
        raise ValueError("the record files are of different kinds: " + ", ".join(
            f"{path} is {kind.what if kind else 'per-eta records'}" for path, kind in kinds.items()))
    return _pooled(paths, frames)


def read_records_by_kind(*paths) -> dict[str | None, pd.DataFrame]:
    """Records of several kinds at once, each file read once: {the kind's value column (a RECORD_KINDS key),
    or None for per-eta records: those files' records}, each group checked as `read_records` does."""
    groups: dict = {}
    for path in paths:
        frame = _read_file(Path(path))
        kind = record_kind(frame.columns)
        name = next((column for column, known in RECORD_KINDS.items() if known is kind), None)
        groups.setdefault(name, ([], []))
        groups[name][0].append(path)
        groups[name][1].append(frame)
    return {name: _pooled(group_paths, frames) for name, (group_paths, frames) in groups.items()}


def _pooled(paths, frames) -> pd.DataFrame:
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    kind = record_kind(records.columns)
    if kind is not None and not records.empty:
        sources = np.repeat([str(path) for path in paths], [len(frame) for frame in frames])
        check_distinct(records, kind.identity, sources)
    return records


def _read_file(path: Path) -> pd.DataFrame:
    readers = {".csv": pd.read_csv, ".json": pd.read_json}
    if path.suffix not in readers:
        raise ValueError(f"records file {path} must end in .csv or .json")
    try:
        frame = readers[path.suffix](path, dtype={"eta_label": str})
    except FileNotFoundError:
        raise
    except ValueError as error:  # pandas' parse errors (and an empty file) are ValueErrors
        raise ValueError(f"{path} is not a records {path.suffix[1:].upper()} file: {error}") from None
    kind = record_kind(frame.columns)
    if kind is not None:
        _check_kind(frame, kind, path)
    return frame


def _check_kind(frame: pd.DataFrame, kind: RecordKind, path) -> None:
    missing = [c for c in dict.fromkeys((*KEYS, *kind.identity, *kind.numbers)) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} ({kind.what}) lacks column(s) {missing}; it holds {list(frame.columns)}")
    for column in ("eta", *kind.numbers, *(c for c in kind.optional if c in frame.columns)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        off_axis = (np.isnan(values) & frame[column].isna().to_numpy()) if column == "eta" else False  # see KEYS
        bad = np.flatnonzero(~np.isfinite(values) & ~off_axis)
        if len(bad):
            raise ValueError(f"{path} ({kind.what}): column {column!r} must hold finite numbers, but row {bad[0] + 1} "
                             f"holds {frame[column].iloc[bad[0]]} ({len(bad)} such rows)")


def check_distinct(records: pd.DataFrame, identity, sources=None) -> None:
    """Refuse two records with the same `identity` (columns naming one measurement); `sources` (the file of
    each row) names where they are."""
    identity = list(identity)
    repeated = records.duplicated(identity, keep=False).to_numpy()
    if not repeated.any():
        return
    first = records.loc[repeated, identity].iloc[0]
    same = (records[identity] == first).all(axis=1).to_numpy()
    what = ", ".join(f"{IDENTITY_NAMES.get(column, column)} {first[column]}" for column in identity)
    where = ""
    if sources is not None:
        files = list(dict.fromkeys(np.asarray(sources)[same]))
        where = f" twice in {files[0]}" if len(files) == 1 else " in " + " and ".join(files)
    raise ValueError(f"more than one record of {what}{where} ({records.duplicated(identity).sum()} records repeat): "
                     "each test image, VLB run and FID counts once; a file given twice, or a copy of it, would "
                     "shrink the error bars")
