"""Tables 1, 2 and 4 of the paper from per-eta result records (pandas); `expertmerge.table_registry` declares them.

A record is one row (dict / DataFrame row / CSV or JSON row) with these columns:
  eta_label  str    "eta_min", "eta_max", a number such as "0.3" (the merged model at that eta), "auto" (the
                    VLB-optimal merge chosen from the experts' L(gamma), plotted at its first switch), or the
                    name of an unmerged baseline ("edm", "vdm", ...), shown upper-cased.
  eta        float  position on the eta axis: the threshold itself for merged rows; by the paper's
                    plotting convention 0 for the quality baseline (EDM) and 1 for the likelihood one (VDM).
  gamma_min, gamma_max  float, optional: a baseline's native gamma range, shown in its label.
  Table 1:   bpd_mean, bpd_sem (standard error across test images), nfe_mean   (ODE likelihood);
             or per-image `image`, `bpd`, `nfe` rows (and `batch_size`, the batch the image was solved in), which
             are reduced with `nll_summary`; "NFE batch" is then the largest batch actually solved
  Table 2:   sampler ("ode", "ancestral", "heun18" = Heun at 18 steps, ...), fid, nfe_mean; optional fid_spread
             (std across seed groups)
  Table 4:   vlb_mean, vlb_std (over runs); or per-run `run`, `vlb` rows, which are reduced with `vlb_summary`
Rows come out in eta order. Numbers stay numeric in the CSV; the .md and .tex files show "mean ± error".
A file of per-image NLL, per-run VLB, FID or predicted-VLB records (RECORD_KINDS) is checked when read, and
no measurement may be pooled twice: not a test image, a run or a sampler's FID of one eta.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .files import write_text
from .records import KEYS, check_distinct, read_records, record_kind
from .samplers import result_title

def load_records(*paths) -> pd.DataFrame:
    """Concatenate records from .csv / .json files (JSON: a list of objects), each checked as its kind
    (`expertmerge.records`); a measurement given twice, in one file or across files, is refused."""
    return check_records(read_records(*paths), ())


def check_records(records, columns) -> pd.DataFrame:
    """DataFrame of `records` with KEYS + `columns` present; numeric columns finite."""
    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    if df.empty:
        raise ValueError("no result records given (need at least one row per eta)")
    missing = [c for c in (*KEYS, *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"result records lack column(s) {missing}; required: {list(KEYS) + list(columns)}, "
                         f"present: {list(df.columns)}")
    df["eta_label"] = df["eta_label"].astype(str)
    for column in ("eta", *columns):
        if column == "sampler":
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        off_axis = values.isna() & df[column].isna() if column == "eta" else False  # an expert beyond the pair
        if not (np.isfinite(values) | off_axis).all():
            raise ValueError(f"column {column!r} must hold finite numbers, got {df[column].tolist()}")
        df[column] = values
    if "dataset" in df.columns and df["dataset"].nunique() > 1:
        raise ValueError(f"records mix datasets {sorted(df['dataset'].unique())}; build one table per dataset")
    kind = record_kind(columns)
    if kind is not None and all(column in df.columns for column in kind.identity):
        check_distinct(df, kind.identity)
    return df


def summarize(df: pd.DataFrame, value: str, by=KEYS) -> pd.DataFrame:
    """Reduce repeated rows (images, runs) to `{value}_mean`, `_std` (ddof=1), `_sem`, `_count` per group."""
    df = check_records(df, (value,))
    grouped = df.groupby(list(by), sort=False, dropna=False)[value]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"] / np.sqrt(out["count"])
    return out.rename(columns={k: f"{value}_{k}" for k in ("mean", "std", "count", "sem")})


def _grouping(df: pd.DataFrame) -> tuple:
    return (*KEYS, *[c for c in ("gamma_min", "gamma_max") if c in df.columns])


def _frame(records) -> pd.DataFrame:
    return records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))


def nll_summary(records) -> pd.DataFrame:
    """Per-eta ODE NLL: records holding bpd_mean, bpd_sem, nfe_mean as given; else per-image `bpd`, `nfe`
    rows reduced to bpd_mean, bpd_sem (standard error across test images) and nfe_mean."""
    df = _frame(records)
    if "bpd_mean" in df.columns or "bpd" not in df.columns:
        return check_records(df, ("bpd_mean", "bpd_sem", "nfe_mean"))
    by = _grouping(df)
    out = summarize(df, "bpd", by).merge(summarize(df, "nfe", by)[[*by, "nfe_mean"]], on=list(by))
    if "batch_size" in df.columns:  # NFE depend on the batch an adaptive solve shared: the largest, beside them
        out = out.merge(df.groupby(list(by), sort=False, dropna=False)["batch_size"].max().reset_index(), on=list(by))
    return out


def vlb_summary(records) -> pd.DataFrame:
    """Per-eta VLB: records holding vlb_mean, vlb_std as given; else per-run `vlb` rows reduced to
    vlb_mean and vlb_std (ddof=1, over runs)."""
    df = _frame(records)
    if "vlb_mean" in df.columns or "vlb" not in df.columns:
        return check_records(df, ("vlb_mean", "vlb_std"))
    return summarize(df, "vlb", _grouping(df))


def is_merged(eta_label: str) -> bool:
    """True for a merged model's label ("eta_min", "eta_max", "auto", "0.3"), False for an unmerged baseline's."""
    try:
        return eta_label in ("eta_min", "eta_max", "auto") or math.isfinite(float(eta_label))
    except ValueError:
        return False


def row_label(record) -> str:
    """Paper-style row label: 'EDM (γ ∈ [-12.43, 8.764])', 'Ours ηmin=0.0394', 'Ours η=0.3'."""
    label, eta = str(record["eta_label"]), float(record["eta"])
    if label in ("eta_min", "eta_max"):
        return f"Ours η{label[4:]}={eta:.4f}".rstrip("0")
    if label == "auto":
        return f"Ours auto (η={eta:.3f})"
    if is_merged(label):
        return f"Ours η={label}"
    lo, hi = record.get("gamma_min", math.nan), record.get("gamma_max", math.nan)
    return label.upper() + (f" (γ ∈ [{lo:.4g}, {hi:.4g}])" if np.isfinite([lo, hi]).all() else "")


def _in_eta_order(df: pd.DataFrame, unique_by=("eta_label",)) -> pd.DataFrame:
    duplicated = df.duplicated(list(unique_by))
    if duplicated.any():
        raise ValueError(f"more than one record for {df.loc[duplicated, list(unique_by)].to_dict('records')}; "
                         "reduce repeated rows with summarize() first")
    df = df.sort_values("eta", kind="stable").reset_index(drop=True)
    df.insert(0, "Threshold", [row_label(r) for r in df.to_dict("records")])
    return df


def _finish(table: pd.DataFrame, decimals: dict, errors: dict) -> pd.DataFrame:
    table.attrs.update(decimals=decimals, errors=errors)  # used by write_table for .md/.tex
    return table


def table1(records) -> pd.DataFrame:
    """Table 1: ODE test NLL (bpd) ± standard error and NFE per eta (per-image rows are reduced first)."""
    df = _in_eta_order(nll_summary(records))
    names = {"Threshold": "Threshold", "bpd_mean": "NLL (bpd)", "bpd_sem": "NLL s.e.", "nfe_mean": "NFE",
             "batch_size": "NFE batch"}
    table = df[[column for column in names if column in df.columns]].rename(columns=names)
    return _finish(table, {"NLL (bpd)": 3, "NLL s.e.": 3, "NFE": 0, "NFE batch": 0},
                   {"NLL (bpd)": ("NLL s.e.", "s.e.")})


def table2(records) -> pd.DataFrame:
    """Table 2: FID (± spread across seed groups, if given) and NFE per eta, one column group per sampler."""
    df = check_records(records, ("sampler", "fid", "nfe_mean"))
    parts, decimals, errors = [], {}, {}
    for sampler in df["sampler"].unique():
        part = _in_eta_order(df[df["sampler"] == sampler])
        name = result_title(sampler)
        names = {"fid": f"FID ({name})", "fid_spread": f"FID spread ({name})", "nfe_mean": f"NFE ({name})",
                 "batch_size": f"NFE batch ({name})"}
        present = [c for c in names if c in part.columns and part[c].notna().any()]
        parts.append(part.set_index(["eta", "Threshold"])[present].rename(columns=names))
        decimals.update({names["fid"]: 2, names["fid_spread"]: 2, names["nfe_mean"]: 0, names["batch_size"]: 0})
        errors[names["fid"]] = (names["fid_spread"], "seed spread")
    table = pd.concat(parts, axis=1).sort_index(level="eta", kind="stable").reset_index().drop(columns="eta")
    return _finish(table, decimals, errors)


def table4(records, predicted=None) -> pd.DataFrame:
    """Table 4: VLB (bpd) mean and std over runs per eta (per-run `vlb` rows are reduced first), and, given
    `predict-vlb` records, the VLB predicted from the experts' L(gamma) beside it."""
    df = _in_eta_order(vlb_summary(records))
    names = {"Threshold": "Threshold", "vlb_mean": "VLB mean (bpd)", "vlb_std": "VLB std"}
    if predicted is not None:
        df = df.merge(_frame(predicted)[["eta_label", "predicted_vlb"]], on="eta_label", how="left")
        names["predicted_vlb"] = "VLB predicted (bpd)"
    table = df[list(names)].rename(columns=names)
    return _finish(table, {"VLB mean (bpd)": 3, "VLB std": 3, "VLB predicted (bpd)": 3}, {})


# ----------------------------------------------------------------------------
# The paper's layout: data sets side by side.


def short_label(eta_label: str) -> str:
    """Column/row name of an eta in the paper's tables: 'EDM', 'ηmin', '0.3', 'ηmax', 'VDM'."""
    return {"eta_min": "ηmin", "eta_max": "ηmax"}.get(eta_label, eta_label if is_merged(eta_label) else eta_label.upper())


def _by_eta(frame: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """`columns` (record column -> shown name) of one data set, indexed by eta label, in eta order."""
    frame = frame.sort_values("eta", kind="stable")
    return frame.set_index("eta_label")[list(columns)].rename(columns=columns)


def _eta_columns(parts: dict, metrics: dict, decimals: dict) -> pd.DataFrame:
    """Tables 1 and 2 as printed: one row per (data set, metric), one column per eta."""
    rows = []
    for dataset, frame in parts.items():
        for column, metric in metrics.items():
            if column in frame.columns and frame[column].notna().any():
                rows.append({"Dataset": dataset, "Metric": metric,
                             **{short_label(label): value for label, value in frame[column].items()}})
    table = pd.DataFrame(rows)
    table.attrs.update(row_decimals=decimals)
    return table


def paper_table1(records: dict) -> pd.DataFrame:
    """Table 1 in the paper's layout; `records` maps a data set's display name to its per-image NLL records, in
    column order."""
    parts = {name: _by_eta(summary, {key: shown for key, shown in
                                     (("bpd_mean", "NLL"), ("nfe_mean", "NFE"), ("batch_size", "NFE batch"))
                                     if key in summary.columns})
             for name, summary in ((name, nll_summary(frame)) for name, frame in records.items())}
    return _eta_columns(parts, {"NLL": "NLL", "NFE": "NFE", "NFE batch": "NFE batch"},
                        {"NLL": 2, "NFE": 0, "NFE batch": 0})


def paper_table2(records: dict) -> pd.DataFrame:
    """Table 2 in the paper's layout, from each data set's per-(sampler, eta) FID records."""
    parts = {}
    for name, frame in records.items():
        frame = check_records(frame, ("sampler", "fid", "nfe_mean"))
        shown = {"fid": "FID", "nfe_mean": "NFE", "batch_size": "NFE batch"}
        pieces = [_by_eta(frame[frame["sampler"] == sampler],
                          {key: f"{name} ({result_title(sampler)})" for key, name in shown.items()
                           if key in frame.columns})
                  for sampler in frame["sampler"].unique()]
        parts[name] = pd.concat(pieces, axis=1)
    metrics = {column: column for part in parts.values() for column in part.columns}
    return _eta_columns(parts, metrics, {m: (2 if m.startswith("FID") else 0) for m in metrics})


def paper_table4(records: dict) -> pd.DataFrame:
    """Table 4 in the paper's layout, from each data set's per-run VLB records."""
    parts = [_by_eta(vlb_summary(frame), {"vlb_mean": f"{name} Mean", "vlb_std": f"{name} Std"})
             for name, frame in records.items()]
    table = pd.concat(parts, axis=1).reset_index(names="Threshold")
    table["Threshold"] = table["Threshold"].map(short_label)
    decimals = {column: (2 if column.endswith("Mean") else 3) for column in table.columns[1:]}
    return _finish(table, decimals, {})


# ----------------------------------------------------------------------------
# Writers.


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Strings for .md/.tex: fixed decimals per column; 'value ± error' where attrs['errors'] pairs two columns."""
    decimals, errors = table.attrs.get("decimals", {}), table.attrs.get("errors", {})
    text = lambda value, d: "" if pd.isna(value) else f"{value:.{d}f}"
    shown = table.copy()
    row_decimals = table.attrs.get("row_decimals")
    if row_decimals:  # one metric per row (Tables 1 and 2 as printed)
        numeric = [c for c in table.columns if c not in ("Dataset", "Metric")]
        shown[numeric] = shown[numeric].astype(object)
        for i, metric in enumerate(table["Metric"]):
            for column in numeric:
                shown.loc[i, column] = text(table.loc[i, column], row_decimals.get(metric, 2))
    for column in table.columns:
        if column in decimals:
            shown[column] = [text(v, decimals[column]) for v in table[column]]
    for column, (error, error_name) in errors.items():
        if column in shown and error in shown:
            shown[column] = [f"{v} ± {e}" if v and e else v for v, e in zip(shown[column], shown[error])]
            shown = shown.drop(columns=error).rename(columns={column: f"{column} ± {error_name}"})
    return shown


def latex_text(text: str) -> str:
    """Escape LaTeX specials and spell the table's Unicode symbols in math mode."""
    for char in "\\&%#_{}$":
        text = text.replace(char, "\\" + char)
    for symbol, latex in (("ηmin", r"$\eta_{\min}$"), ("ηmax", r"$\eta_{\max}$"), ("η", r"$\eta$"),
                          ("γ", r"$\gamma$"), ("∈", r"$\in$"), ("±", r"$\pm$"), ("↓", r"$\downarrow$"),
                          ("∨", r"$^{\vee}$"), ("†", r"$^{\dagger}$"), ("‡", r"$^{\ddagger}$"), ("⊎", r"$\uplus$"),
                          ("∗", r"$^{*}$")):
        text = text.replace(symbol, latex)
    return text


def write_table(table: pd.DataFrame, stem, caption: str | None = None) -> list[Path]:
    """Write `stem.csv` (numbers), `stem.md` (GitHub markdown) and `stem.tex` (booktabs), each via a temp name."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".tex")]
    shown = display_frame(table)
    write_text(paths[0], table.to_csv(index=False))
    text_columns = [c in table.columns and not pd.api.types.is_numeric_dtype(table[c]) for c in shown.columns]
    write_text(paths[1], (f"{caption}\n\n" if caption else "") + shown.to_markdown(
        index=False, disable_numparse=True, colalign=["left" if t else "right" for t in text_columns]) + "\n")
    latex = shown.map(latex_text).rename(columns=latex_text)
    style = latex.style.hide(axis="index")
    write_text(paths[2], style.to_latex(hrules=True, caption=latex_text(caption) if caption else None,
                                         column_format="".join("l" if t else "r" for t in text_columns)))
    return paths
