import math
import re
from pathlib import Path

import pandas as pd
import pytest

from expertmerge import literature
from expertmerge.literature import literature_table, load_literature, parse_cell

PAPER = Path(__file__).parents[2] / "shared" / "papers" / "merging-pretrained-experts.txt"
TABLE5_SECTIONS = ["Base Models", "Focused on both FID-NLL", "Focused on FID", "Focused on NLL", "Ours"]
TABLE3_SECTIONS = ["Base Models", "Focused on both FID and NLL", "Ours"]
NLL, FID, NFE = "NLL(↓)", "FID(↓)", "NFE"


def cell(table, model_prefix, column):
    """The one cell of the row whose Model starts with `model_prefix`."""
    rows = table[table["Model"].str.startswith(model_prefix)]
    assert len(rows) == 1, (model_prefix, rows["Model"].tolist())
    return rows.iloc[0][column]


@pytest.mark.parametrize("model, column, expected", [
    ("VDM (Kingma", f"CIFAR-10 {NLL}", "2.65∨"),
    ("EDM (w/ Heun Sampler)", f"CIFAR-10 {FID}", "1.97"),
    ("EDM (w/ Heun Sampler)", f"CIFAR-10 {NFE}", "35"),
    ("i-DODE (VP) (", f"ImageNet32 {NLL}", "3.43/3.70∗"),
    ("NFDM-OT", f"ImageNet32 {FID}", "4.11"),
    ("Ours (η = 0.5, ImageNet32)", f"ImageNet32 {FID}", "6.58∗"),
    ("DenseFlow-74-10", f"CIFAR-10 {FID}", "34.90"),
    ("SiD", f"CIFAR-10 {FID}", "1.923"),
    ("VDM (our evaluation", f"CIFAR-10 {NLL}", "2.64/2.66∨"),
    ("PaGoDA", f"ImageNet32 {NFE}", "1"),
])
def test_cells_as_printed(model, column, expected):
    assert cell(literature_table(5), model, column) == expected


def test_row_counts_and_section_order():
    for number, count, sections in ((5, 36, TABLE5_SECTIONS), (3, 9, TABLE3_SECTIONS)):
        table = literature_table(number)
        assert list(table.columns) == list(literature.TABLE_COLUMNS)
        assert len(table) == count
        assert list(dict.fromkeys(table["Section"])) == sections
        assert (table["Section"] != table["Section"].shift()).sum() == len(sections)  # contiguous


def test_table3_is_exactly_the_flagged_rows():
    rows = load_literature()
    flagged = rows[rows["table3"]]
    assert flagged["model"].tolist() == [
        "VDM", "EDM (w/ Heun Sampler)", "Soft Truncation", "CTM (⊎- randomflip)",
        "VDM (our evaluation, γ ∈[-13.3, 5])", "EDM (our evaluation, γ ∈[-12.43, 8.764])",
        "Ours NLL (η = 0.4, CIFAR-10)", "Ours (η = 0.3, CIFAR-10)", "Ours (η = 0.5, ImageNet32)"]
    table3 = literature_table(3)
    assert table3.iloc[:, 2:].values.tolist() == flagged[list(literature.CELL_COLUMNS)].values.tolist()
    assert cell(table3, "VDM (our", "Model") == "VDM (our evaluation, γ ∈[-13.3, 5])"  # uncited in Table 3
    assert cell(literature_table(5), "VDM (our", "Model").endswith("(Kingma et al., 2021)")


def test_duplicate_row_kept_as_printed():
    models = load_literature()["model"].tolist()
    assert models.count("Improved DDPM (Lvlb)") == 2


def test_every_cell_parses():
    rows = load_literature()
    for column in literature.CELL_COLUMNS:
        for text in rows[column]:
            values, markers = parse_cell(text)
            assert all(math.isfinite(v) and v > 0 for v in values), text
            assert set(markers) <= set(literature.MARKERS), text


@pytest.mark.parametrize("text, expected", [
    ("2.64/2.66∨", ((2.64, 2.66), ("∨",))),
    ("-", ((), ())),
    ("35", ((35.0,), ())),
    ("3.72∗∨", ((3.72,), ("∗", "∨"))),
    ("3.72∗/3.72∗∨", ((3.72, 3.72), ("∗", "∨"))),
    (" 1.923 ", ((1.923,), ())),
])
def test_parse_cell(text, expected):
    assert parse_cell(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "2.6x", "2.64/", "/2.6", "∨2.6", "2,64", "--", "1e3", None, 2.5])
def test_parse_cell_rejects_with_cell_named(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_cell(text)


def measured():
    nan = math.nan
    return pd.DataFrame([
        dict(model="Ours η=0.3", dataset="cifar10", nll=2.6312, fid=2.0149, nfe=168.6, nll_vlb=2.655),
        dict(model="Ours η=0.3", dataset="imagenet32", nll=3.7249, fid=nan, nfe=179.4, nll_vlb=nan),
        dict(model="EDM", dataset="cifar10", nll=nan, fid=1.974, nfe=35.0, nll_vlb=nan),
    ])


def test_measured_rows_appended_and_formatted():
    table = literature_table(3, measured())
    assert len(table) == 9 + 2
    tail = table.iloc[-2:]
    assert tail["Section"].tolist() == [literature.MEASURED_SECTION] * 2
    assert tail.values.tolist() == [
        [literature.MEASURED_SECTION, "Ours η=0.3", "2.63/2.65∨", "2.01", "169", "3.72∗", "-", "179"],
        [literature.MEASURED_SECTION, "EDM", "-", "1.97", "35", "-", "-", "-"],
    ]
    only_vlb = measured().assign(nll=math.nan).iloc[:1]
    assert literature_table(5, only_vlb).iloc[-1][f"CIFAR-10 {NLL}"] == "2.65∨"
    without_vlb = measured().drop(columns="nll_vlb")
    assert literature_table(5, without_vlb).iloc[-2][f"CIFAR-10 {NLL}"] == "2.63"


@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(columns=["fid", "nfe"]), r"missing column\(s\) \['fid', 'nfe'\]"),
    (lambda df: df.assign(dataset="cifar100"), r"unknown dataset\(s\) \['cifar100'\]"),
    (lambda df: df.assign(nll="low"), "column 'nll' holds non-numbers"),
    (lambda df: pd.concat([df, df]), "more than one row"),
    (lambda df: df.to_dict("records"), "must be a pandas DataFrame"),
])
def test_bad_measured_input(change, message):
    with pytest.raises(ValueError, match=message):
        literature_table(5, change(measured()))


@pytest.mark.parametrize("number", [1, 4, "3", None])
def test_bad_table_number(number):
    with pytest.raises(ValueError, match="3 and 5"):
        literature_table(number)


def test_write_table_accepts_it(tmp_path):
    from expertmerge.tables import write_table

    paths = write_table(literature_table(3, measured()), tmp_path / "table3", caption=literature.literature_caption(3))
    written = pd.read_csv(paths[0], dtype=str, keep_default_na=False)
    assert written.values.tolist() == literature_table(3, measured()).values.tolist()
    assert "| Focused on both FID and NLL" in paths[1].read_text(encoding="utf-8")
    assert r"Lou \& Ermon" not in paths[2].read_text(encoding="utf-8")  # Table 3 lacks that row
    assert r"Lou \& Ermon" in write_table(literature_table(5), tmp_path / "table5")[2].read_text(encoding="utf-8")


# --- The data file is a transcription of the paper text: parse both tables out of it and compare. ---------


def paper_table_rows(lines, caption_start, sections):
    """(section, model line, six cells) for each row of the table whose caption starts with `caption_start`.

    In the extracted text the header ends with the second "NFE" line; then every line is a section heading or
    a "Model (citation)" line followed by its six cells. The table ends at the first line that is neither.
    """
    start = next(i for i, line in enumerate(lines) if line.startswith(caption_start))
    i = [k for k in range(start, start + 40) if lines[k] == "NFE"][1] + 1
    rows, section = [], None
    while i < len(lines):
        if lines[i] in sections:
            section, i = lines[i], i + 1
            continue
        label, cells = lines[i], lines[i + 1:i + 7]
        if len(cells) < 6 or is_cell(label) or not all(map(is_cell, cells)):
            break
        rows.append((section, label.replace("´c", "ć"), cells))  # "Grci´c" is the extraction of "Grcić"
        i += 7
    return rows


def is_cell(text):
    try:
        parse_cell(text)
        return True
    except ValueError:
        return False


@pytest.mark.skipif(not PAPER.exists(), reason=f"paper text not found at {PAPER}; cannot check the transcription")
@pytest.mark.parametrize("number, sections", [(5, TABLE5_SECTIONS), (3, TABLE3_SECTIONS)])
def test_data_file_is_the_paper_text(number, sections):
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    in_paper = paper_table_rows(lines, f"Table {number}:", set(sections))
    table = literature_table(number)
    ours = [(row[0], row[1], list(row[2:])) for row in table.itertuples(index=False)]
    assert len(in_paper) == len(ours)
    for printed, stored in zip(in_paper, ours):
        assert printed == stored


def test_measured_rows_are_the_baselines_and_the_best_merged_models():
    labels = ["edm", "eta_min", "0.3", "0.5", "eta_max", "vdm"]
    etas = [0.0, 0.04, 0.3, 0.5, 0.83, 1.0]
    nll_by_eta = [3.21, 3.09, 2.63, 2.62, 2.63, 2.64]
    fid_by_eta = [2.02, 2.04, 2.01, 2.82, 7.73, 9.37]
    base = pd.DataFrame({"eta_label": labels, "eta": etas, "gamma_min": [-12.43, *[None] * 4, -13.3],
                         "gamma_max": [8.764, *[None] * 4, 5.0]})
    nll = pd.concat([base.assign(bpd=nll_by_eta, nfe=200), base.assign(bpd=nll_by_eta, nfe=220)])
    vlb = pd.concat([base.assign(vlb=[v + 0.02 for v in nll_by_eta]), base.assign(vlb=[v + 0.04 for v in nll_by_eta])])
    fid = pd.concat([base.assign(sampler="ode", fid=fid_by_eta, nfe_mean=150),
                     base.assign(sampler="ancestral", fid=[1.0] * 6, nfe_mean=256)])
    rows = literature.measured_from_records("cifar10", nll, vlb, fid)
    assert rows["model"].tolist() == ["EDM (γ ∈ [-12.43, 8.764])", "VDM (γ ∈ [-13.3, 5])",
                                      "Ours, best NLL (η = 0.50, CIFAR-10)", "Ours, best FID (η = 0.30, CIFAR-10)"]
    best_nll = rows.iloc[2]
    assert best_nll["nll"] == pytest.approx(2.62) and best_nll["nll_vlb"] == pytest.approx(2.65)
    assert best_nll["fid"] == pytest.approx(2.82) and best_nll["nfe"] == 150  # ODE sampling, not ancestral
    table = literature.literature_table(3, rows)
    assert table.iloc[-1].tolist()[1:5] == ["Ours, best FID (η = 0.30, CIFAR-10)", "2.63/2.66∨", "2.01", "150"]
