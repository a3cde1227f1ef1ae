"""The paper's literature comparison (Table 3 and its extended version, Table 5) with measured rows appended.

The literature numbers are quoted from other papers, so they live verbatim in `data/literature.csv` (markers
and "a/b" pairs included) rather than in code: the CSV can be checked line by line against the paper text,
and nothing is lost by converting to floats. `parse_cell` turns a cell into numbers when a comparison needs
them. `literature_table` returns plain string columns, which `expertmerge.tables.write_table` writes as-is.
"""
from __future__ import annotations

import math
import re
from importlib import resources

import pandas as pd

MARKERS = {  # the paper's legend, in its words; unmarked NLL: truncated-normal dequantization + PF-ODE
    "†": "Uniform Deq.",
    "‡": "Variational Deq.",
    "∨": "VLB",
    "⊎": "Data Augmentation",
    "∗": "ImageNet32 (old version)",
}
DATASETS = {"cifar10": "CIFAR-10", "imagenet32": "ImageNet32"}
METRICS = {"nll": "NLL(↓)", "fid": "FID(↓)", "nfe": "NFE"}
CELL_COLUMNS = tuple(f"{dataset}_{metric}" for dataset in DATASETS for metric in METRICS)
TABLE_COLUMNS = ("Section", "Model", *(f"{DATASETS[d]} {METRICS[m]}" for d in DATASETS for m in METRICS))
EMPTY = "-"
MEASURED_SECTION = "This pipeline (measured)"
MEASURED_COLUMNS = ("model", "dataset", "nll", "fid", "nfe")
# Table 3 prints two things differently from Table 5, whose wording the CSV stores:
TABLE3_SECTION_TITLES = {"Focused on both FID-NLL": "Focused on both FID and NLL"}
TABLE3_UNCITED_SECTION = "Ours"  # Table 3 prints the "Ours" VDM/EDM rows without their citations
_PART = re.compile(r"(\d+(?:\.\d+)?)([" + "".join(MARKERS) + r"]*)")


def parse_cell(text) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Numbers and markers of one printed cell: "2.64/2.66∨" -> ((2.64, 2.66), ("∨",)); "-" -> ((), ()).

    Markers are returned once each, in order of first appearance, because they qualify how the cell was
    measured (see MARKERS) rather than one number. Anything else raises ValueError naming the cell, so a
    typo in the data file cannot silently turn into a wrong number.
    """
    if not isinstance(text, str):
        raise ValueError(f"literature cell {text!r} is not text")
    cell = text.strip()
    if cell == EMPTY:
        return (), ()
    values, markers = [], []
    for part in cell.split("/"):
        match = _PART.fullmatch(part)
        if match is None:
            raise ValueError(f"cannot parse literature cell {text!r}: expected {EMPTY!r} or numbers separated by "
                             f"'/', each optionally followed by markers from {''.join(MARKERS)}")
        values.append(float(match[1]))
        markers.extend(marker for marker in match[2] if marker not in markers)
    return tuple(values), tuple(markers)


def load_literature() -> pd.DataFrame:
    """Every row of Table 5 in the paper's order, all cells as printed (str); `table3` is a bool column."""
    source = resources.files("expertmerge").joinpath("data/literature.csv")
    with source.open(encoding="utf-8") as handle:
        rows = pd.read_csv(handle, comment="#", dtype=str, keep_default_na=False)
    flags = rows["table3"].map({"yes": True, "no": False})
    if flags.isna().any():
        raise ValueError(f"{source}: column table3 must be 'yes' or 'no', got {sorted(set(rows['table3']))}")
    rows["table3"] = flags.astype(bool)
    return rows


def literature_table(number: int, measured: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table `number` (3 or 5) as printed, one row per model, plus `measured` rows under MEASURED_SECTION.

    Columns are TABLE_COLUMNS, all strings, with the section as the first column (not an index level) so
    that `tables.write_table`, which writes without the index, keeps it.
    """
    if number not in (3, 5):
        raise ValueError(f"the paper's literature tables are 3 and 5; got table number {number!r}")
    rows = load_literature()
    if number == 3:
        rows = rows[rows["table3"]]
    records = rows.to_dict("records")
    table = pd.DataFrame({
        "Section": [_section_title(record["section"], number) for record in records],
        "Model": [_model_label(record, number) for record in records],
        **{name: rows[column].tolist() for name, column in zip(TABLE_COLUMNS[2:], CELL_COLUMNS)},
    }, columns=list(TABLE_COLUMNS))
    if measured is not None:
        table = pd.concat([table, measured_rows(measured)], ignore_index=True)
    return table


def literature_caption(number: int) -> str:
    """The paper's caption of Table `number` (3 or 5), for `write_table(..., caption=...)`."""
    opening = {3: "Comparison of our method with prior approaches targeting both high likelihood and strong "
                  "perceptual quality.",
               5: "Extended version of Table 3 with additional methods from the literature."}
    if number not in opening:
        raise ValueError(f"the paper's literature tables are 3 and 5; got table number {number!r}")
    legend = ", ".join(f"{meaning}{symbol}" for symbol, meaning in MARKERS.items())
    return (f"Table {number}: {opening[number]} Unless otherwise noted, NLL is evaluated using truncated normal "
            f"dequantization and PF ODE integration. Alternative settings are indicated as follows: {legend}.")


def measured_rows(measured: pd.DataFrame) -> pd.DataFrame:
    """This pipeline's results in the table's layout: one row per model, CIFAR-10 and ImageNet32 side by side.

    Numbers are formatted like the paper's own rows (NLL and FID with 2 decimals, NFE as an integer,
    "nll/nll_vlb∨" when a VLB is given, "-" when not measured) so they read as peers of the literature rows.
    """
    df = _checked_measured(measured)
    rows = []
    for model, group in df.groupby("model", sort=False):
        row = dict.fromkeys(TABLE_COLUMNS[2:], EMPTY)
        for record in group.to_dict("records"):
            name, mark = DATASETS[record["dataset"]], DATASET_MARKS.get(record["dataset"], "")
            row[f"{name} {METRICS['nll']}"] = _nll_text(record["nll"], record.get("nll_vlb", math.nan), mark)
            row[f"{name} {METRICS['fid']}"] = _number_text(record["fid"], 2, mark)
            row[f"{name} {METRICS['nfe']}"] = _number_text(record["nfe"], 0)
        rows.append({"Section": MEASURED_SECTION, "Model": model, **row})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _checked_measured(measured) -> pd.DataFrame:
    """`measured` with numeric metric columns, or one ValueError saying everything that is wrong with it."""
    if not isinstance(measured, pd.DataFrame):
        raise ValueError(f"measured results must be a pandas DataFrame, got {type(measured).__name__}")
    df = measured.copy()
    missing = [column for column in MEASURED_COLUMNS if column not in df.columns]
    problems = [f"missing column(s) {missing}"] if missing else []
    if "dataset" in df.columns:
        unknown = sorted(set(map(str, df["dataset"])) - set(DATASETS))
        problems += [f"unknown dataset(s) {unknown}"] if unknown else []
    for column in ("nll", "fid", "nfe", "nll_vlb"):
        if column in df.columns:
            numbers = pd.to_numeric(df[column], errors="coerce")
            if (numbers.isna() & df[column].notna()).any():
                problems.append(f"column {column!r} holds non-numbers {df[column].tolist()}")
            df[column] = numbers
    if not missing and not problems and df.duplicated(["model", "dataset"]).any():
        problems.append("more than one row for a (model, dataset) pair")
    if problems:
        raise ValueError(f"measured results: {'; '.join(problems)}. Expected columns {list(MEASURED_COLUMNS)} "
                         f"(+ optional nll_vlb), dataset one of {list(DATASETS)}, NaN for not measured")
    df["model"] = df["model"].astype(str)
    return df


DATASET_MARKS = {"imagenet32": "∗"}  # the pipeline uses the original (old) ImageNet32, as the paper does


def _section_title(section: str, number: int) -> str:
    return TABLE3_SECTION_TITLES.get(section, section) if number == 3 else section


def _model_label(record: dict, number: int) -> str:
    """The Model cell as the paper prints it: the name followed by "(citation)" where the table shows one."""
    uncited = not record["citation"] or (number == 3 and record["section"] == TABLE3_UNCITED_SECTION)
    return record["model"] if uncited else f"{record['model']} ({record['citation']})"


def _number_text(value, decimals: int, mark: str = "") -> str:
    return EMPTY if pd.isna(value) else f"{value:.{decimals}f}{mark}"


def _nll_text(nll, nll_vlb, mark: str = "") -> str:
    """ "2.64/2.66∨" like the paper's own VDM row; either part alone when the other is not measured."""
    parts = [_number_text(nll, 2, mark)] if not pd.isna(nll) else []
    parts += [_number_text(nll_vlb, 2, mark) + "∨"] if not pd.isna(nll_vlb) else []
    return "/".join(parts) or EMPTY


def measured_from_records(dataset: str, nll, vlb, fid, fid_budget: float | None = None) -> pd.DataFrame:
    """This pipeline's rows for one data set, chosen as the paper chose its own: both baselines, the
    merged model with the best ODE NLL and the one with the best ODE FID (one row, "best NLL", when they
    are the same); and, given `fid_budget`, the recommended merge (`summary.recommended_eta`: the best ODE
    NLL with an ODE FID <= (1 + fid_budget) x the quality expert's), named "recommended, best ..." when it
    is also one of the others.
    `nll`: per-image ODE NLL records; `vlb`: per-run VLB records; `fid`: per-(sampler, eta) FID records
    (see expertmerge.tables)."""
    from .summary import ode_frame, recommended_eta
    from .tables import is_merged, nll_summary, row_label, vlb_summary

    title = DATASETS.get(dataset, dataset)
    nll, vlb = nll_summary(nll).set_index("eta_label"), vlb_summary(vlb).set_index("eta_label")
    fid_ode = fid[fid["sampler"] == "ode"].set_index("eta_label")
    merged = [label for label in nll.index if is_merged(label) and label in fid_ode.index]
    picks = {label: row_label({**nll.loc[label].to_dict(), "eta_label": label}) for label in nll.index
             if not is_merged(label)}
    whats, limit = {}, ""  # merged label -> why it is picked
    if merged:
        for label, what in ((nll.loc[merged, "bpd_mean"].idxmin(), "best NLL"),
                            (fid_ode.loc[merged, "fid"].idxmin(), "best FID")):
            whats.setdefault(label, [what])
    if fid_budget is not None:
        recommendation = recommended_eta(ode_frame(nll.reset_index(), fid), fid_budget)
        limit = f", FID within {100 * fid_budget:g}% of {recommendation.quality}"  # no ≤, ×: the .tex lacks them
        if recommendation.row is not None:
            whats.setdefault(recommendation.row["eta_label"], []).insert(0, "recommended")
    for label, what in whats.items():
        where = ("auto, " if label == "auto" else "") + f"η = {float(nll.loc[label, 'eta']):.2f}"
        picks[label] = f"Ours, {', '.join(what)} ({where}{limit if 'recommended' in what else ''}, {title})"
    return pd.DataFrame([{"model": model, "dataset": dataset, "nll": nll.loc[label, "bpd_mean"],
                          "nll_vlb": vlb.loc[label, "vlb_mean"] if label in vlb.index else math.nan,
                          "fid": fid_ode.loc[label, "fid"] if label in fid_ode.index else math.nan,
                          "nfe": fid_ode.loc[label, "nfe_mean"] if label in fid_ode.index else math.nan}
                         for label, model in picks.items()])
