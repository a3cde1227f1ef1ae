import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from expertmerge import figures, tables

LABELS = ["edm", "eta_min", "0.2", "0.4", "0.6", "eta_max", "vdm"]
ETAS = [0.0, 0.0394, 0.2, 0.4, 0.6, 0.8294, 1.0]
RANGES = {"edm": (-12.43, 8.764), "vdm": (-13.3, 5.0)}


def records(sampler="ode", shift=0.0):
    rows = []
    for label, eta in zip(LABELS, ETAS):
        row = dict(eta_label=label, eta=eta, sampler=sampler, bpd_mean=2.6 + (eta - 0.5) ** 2, bpd_sem=0.004,
                   nfe_mean=200 + 50 * eta, fid=2 + 8 * eta ** 2 + shift, fid_spread=0.1, vlb_mean=2.65 + eta / 10,
                   vlb_std=0.008)
        if label in RANGES:
            row.update(gamma_min=RANGES[label][0], gamma_max=RANGES[label][1])
        rows.append(row)
    return rows


EXPECTED_ROWS = ["EDM (γ ∈ [-12.43, 8.764])", "Ours ηmin=0.0394", "Ours η=0.2", "Ours η=0.4", "Ours η=0.6",
                 "Ours ηmax=0.8294", "VDM (γ ∈ [-13.3, 5])"]


def test_table1_shape_order_values():
    shuffled = records()[::-1]
    table = tables.table1(shuffled)
    assert list(table.columns) == ["Threshold", "NLL (bpd)", "NLL s.e.", "NFE"]
    assert table["Threshold"].tolist() == EXPECTED_ROWS
    assert np.isfinite(table.iloc[:, 1:].to_numpy(float)).all()
    np.testing.assert_allclose(table["NLL (bpd)"], [2.6 + (e - 0.5) ** 2 for e in ETAS])


def test_table2_one_column_group_per_sampler():
    table = tables.table2(records("ode") + records("ancestral", shift=1.0))
    assert list(table.columns) == ["Threshold", "FID (ODE)", "FID spread (ODE)", "NFE (ODE)",
                                   "FID (ancestral)", "FID spread (ancestral)", "NFE (ancestral)"]
    assert table["Threshold"].tolist() == EXPECTED_ROWS
    np.testing.assert_allclose(table["FID (ancestral)"] - table["FID (ODE)"], 1.0)
    assert np.isfinite(table.iloc[:, 1:].to_numpy(float)).all()


def test_table4_from_summaries_and_from_runs():
    table = tables.table4(records())
    assert list(table.columns) == ["Threshold", "VLB mean (bpd)", "VLB std"]
    assert table["Threshold"].tolist() == EXPECTED_ROWS
    runs = [dict(eta_label=label, eta=eta, vlb=2.6 + eta + 0.01 * run) for label, eta in zip(LABELS, ETAS)
            for run in range(10)]
    from_runs = tables.table4(runs)
    np.testing.assert_allclose(from_runs["VLB mean (bpd)"], [2.6 + e + 0.045 for e in ETAS])
    np.testing.assert_allclose(from_runs["VLB std"], np.std(0.01 * np.arange(10), ddof=1))
    assert from_runs["Threshold"].iloc[0] == "EDM"  # no gamma range given in these records
    # The VLB predicted from the loss curves sits beside the measured one, matched by eta label.
    predicted = [dict(eta_label=label, eta=eta, predicted_vlb=3.0 - eta) for label, eta in zip(LABELS, ETAS)][::-1]
    with_prediction = tables.table4(runs, predicted)
    assert list(with_prediction.columns) == ["Threshold", "VLB mean (bpd)", "VLB std", "VLB predicted (bpd)"]
    np.testing.assert_allclose(with_prediction["VLB predicted (bpd)"], [3.0 - e for e in sorted(ETAS)])


def test_summarize_mean_std_sem():
    rows = [dict(eta_label="0.3", eta=0.3, bpd=v) for v in (1.0, 2.0, 3.0, 6.0)]
    out = tables.summarize(rows, "bpd").iloc[0]
    assert out["bpd_mean"] == 3.0 and out["bpd_count"] == 4
    assert out["bpd_std"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert out["bpd_sem"] == pytest.approx(out["bpd_std"] / 2)


def test_write_table_three_formats(tmp_path):
    table = tables.table1(records())
    paths = tables.write_table(table, tmp_path / "table1", caption="Test NLL per η")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table1.csv", "table1.md", "table1.tex"]
    assert [p.name for p in paths] == ["table1.csv", "table1.md", "table1.tex"]
    back = pd.read_csv(paths[0])
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    markdown, latex = paths[1].read_text(), paths[2].read_text()
    for row in EXPECTED_ROWS:
        assert row in markdown
    assert "NLL (bpd) ± s.e." in markdown and "2.850 ± 0.004" in markdown  # EDM row
    assert r"Ours $\eta_{\min}$=0.0394" in latex and r"$\gamma$ $\in$ [-13.3, 5]" in latex
    assert r"\toprule" in latex and latex.count(r"\\") == len(EXPECTED_ROWS) + 1
    assert "η" not in latex and "±" not in latex


def test_bad_records_get_clear_errors():
    with pytest.raises(ValueError, match="no result records"):
        tables.table1([])
    with pytest.raises(ValueError, match=r"lack column\(s\) \['bpd_sem'\]"):
        tables.table1([{k: v for k, v in r.items() if k != "bpd_sem"} for r in records()])
    with pytest.raises(ValueError, match="finite numbers"):
        tables.table1([dict(r, nfe_mean=float("nan")) for r in records()])
    with pytest.raises(ValueError, match="more than one record"):
        tables.table1(records() + records()[:1])
    with pytest.raises(ValueError, match="mix datasets"):
        tables.table4([dict(r, dataset=d) for r, d in zip(records(), ["cifar10", "imagenet32"] * 4)])


def test_load_records_csv_and_json(tmp_path):
    pd.DataFrame(records()[:3]).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(records()[3:]).to_json(tmp_path / "b.json", orient="records")
    df = tables.load_records(tmp_path / "a.csv", tmp_path / "b.json")
    assert tables.table1(df)["Threshold"].tolist() == EXPECTED_ROWS
    with pytest.raises(ValueError, match=".csv or .json"):
        tables.load_records(tmp_path / "c.txt")


def png_shape(path):
    return matplotlib.image.imread(path).shape


def per_image_and_per_run():
    images = [dict(eta_label=label, eta=eta, image=i, bpd=2.6 + eta + 0.1 * i, nfe=200 + i)
              for label, eta in zip(LABELS, ETAS) for i in range(4)]
    runs = [dict(eta_label=label, eta=eta, run=r, vlb=2.7 + eta + 0.01 * r) for label, eta in zip(LABELS, ETAS)
            for r in range(3)]
    return images, runs


def test_table1_reduces_per_image_rows():
    images, _ = per_image_and_per_run()
    table = tables.table1(images)
    np.testing.assert_allclose(table["NLL (bpd)"], [2.6 + e + 0.15 for e in ETAS])
    np.testing.assert_allclose(table["NLL s.e."], np.std(0.1 * np.arange(4), ddof=1) / 2)
    np.testing.assert_allclose(table["NFE"], 201.5)


def test_tradeoff_figure(tmp_path):
    paths = figures.tradeoff_figure(records(), records(), records("ode") + records("ancestral", 1.0),
                                    tmp_path / "fig2", title="test")
    assert [p.name for p in paths] == ["fig2.png", "fig2.pdf"]
    assert png_shape(paths[0])[:2] == (600, 960) and paths[1].stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2.pdf", "fig2.png"]


def drawn_tradeoff_figure(monkeypatch, rows, **options):
    """The Fig. 2 matplotlib figure (not saved): its left (NLL) and right (FID) axes and its legend's texts."""
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem, dpi: drawn.setdefault("fig", fig) and [])
    figures.tradeoff_figure(rows, rows, rows + records("ancestral", 1.0), "unused", **options)
    left, right = drawn["fig"].axes
    return left, right, [text.get_text() for text in drawn["fig"].legends[0].get_texts()]


def test_tradeoff_figure_marks_the_fid_limit_and_the_recommended_eta(monkeypatch):
    left, right, legend = drawn_tradeoff_figure(monkeypatch, records(), fid_budget=0.05)
    # EDM's ODE FID is 2: the limit is 2.1, which only eta_min (2.012) keeps; 0.2 has 2.32.
    limit = [line for line in right.get_lines() if line.get_label().startswith("ODE FID limit")]
    assert len(limit) == 1 and limit[0].get_ydata()[0] == pytest.approx(2.1) and limit[0].get_linestyle() == ":"
    star = [line for line in left.get_lines() if line.get_marker() == "*"]
    assert len(star) == 1 and (star[0].get_xdata()[0], star[0].get_ydata()[0]) == pytest.approx((0.0394, 2.6 + 0.4606 ** 2))
    assert "recommended" in [text.get_text() for text in left.texts]
    assert "ODE FID limit (1.05×EDM)" in legend and "auto (VLB-optimal)" not in legend

    left, right, legend = drawn_tradeoff_figure(monkeypatch, records(), fid_budget=0.0)  # nothing within: limit only
    assert not [line for line in left.get_lines() if line.get_marker() == "*"]
    assert "ODE FID limit (1×EDM; no merge within)" in legend

    left, right, legend = drawn_tradeoff_figure(monkeypatch, records())  # no budget: neither
    assert not [line for line in right.get_lines() if line.get_label().startswith("ODE FID limit")]


def test_tradeoff_figure_draws_the_auto_merge_apart_from_the_line(monkeypatch, tmp_path):
    auto = dict(records()[3], eta_label="auto", eta=0.3, bpd_mean=2.5, fid=2.05)
    left, right, legend = drawn_tradeoff_figure(monkeypatch, records() + [auto], fid_budget=0.05)
    ode_line = next(bars.lines[0] for bars in left.containers if bars.get_label() == "NLL, ODE")
    assert 0.3 not in ode_line.get_xdata() and list(ode_line.get_xdata()) == [0.0394, 0.2, 0.4, 0.6, 0.8294]
    pluses = [line for line in left.get_lines() + right.get_lines() if line.get_marker() == "P"]
    assert len(pluses) == 3 and all(list(line.get_xdata()) == [0.3] for line in pluses)  # NLL, VLB, ODE FID
    assert "auto (VLB-optimal)" in legend
    star = next(line for line in left.get_lines() if line.get_marker() == "*")
    assert star.get_xdata()[0] == 0.3  # the auto merge is a candidate, and here the best NLL within the limit
    monkeypatch.undo()
    paths = figures.tradeoff_figure(records() + [auto], records() + [auto], records() + [auto], tmp_path / "fig2",
                                    fid_budget=0.05)
    assert png_shape(paths[0])[:2] == (600, 960)


def test_predicted_vlb_figure(tmp_path):
    runs = [dict(eta_label=label, eta=eta, vlb=2.6 + eta + 0.01 * run) for label, eta in zip(LABELS, ETAS)
            for run in range(10)]
    predicted = [dict(eta_label=label, eta=eta, predicted_vlb=2.62 + eta) for label, eta in zip(LABELS, ETAS)]
    paths = figures.predicted_vlb_figure(runs, predicted, tmp_path / "predicted.png")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="predicted_vlb"):
        figures.predicted_vlb_figure(runs, [dict(eta_label="edm", eta=0.0)], tmp_path / "bad.png")


def test_tradeoff_figure_from_raw_rows_and_png_path(tmp_path):
    images, runs = per_image_and_per_run()
    paths = figures.tradeoff_figure(images, runs, None, tmp_path / "fig2.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2.pdf", "fig2.png"] == sorted(p.name for p in paths)


def test_tradeoff_figure_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        figures.tradeoff_figure(None, None, None, tmp_path / "none")
    with pytest.raises(ValueError, match="lack column"):
        figures.tradeoff_figure(None, None, [{"eta_label": "0.3", "eta": 0.3}], tmp_path / "bad")
    with pytest.raises(ValueError, match="no result records"):
        figures.tradeoff_figure([], None, None, tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []


def digits(n, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, channels), dtype=np.uint8)


def test_fixed_noise_grid_pixel_size(tmp_path):
    panels = [digits(5, seed=k) for k in range(len(LABELS))]
    paths = figures.fixed_noise_grid(panels, LABELS, tmp_path / "fig3", row_labels=[f"seed {i}" for i in range(5)],
                                     scale=4)
    cell = 8 * 4 + figures.GAP
    assert png_shape(paths[0])[:2] == (5 * cell - figures.GAP + figures.TITLE_PX,
                                        len(LABELS) * cell - figures.GAP + figures.LABEL_PX)
    assert paths[1].stat().st_size > 1000
    titles = [figures.column_title(label) for label in LABELS]
    assert titles == ["EDM", "ηmin", "η=0.2", "η=0.4", "η=0.6", "ηmax", "VDM"]
    assert [figures.column_title(t) for t in titles] == titles


def test_fixed_noise_grid_pixels_are_the_images(tmp_path):
    images = digits(2, channels=3)
    path = figures.fixed_noise_grid([images], ["0.5"], tmp_path / "g", scale=3)[0]
    png = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(np.uint8)
    top = figures.TITLE_PX
    np.testing.assert_array_equal(png[top:top + 24:3, 0:24:3], images[0])
    np.testing.assert_array_equal(png[top + 24 + figures.GAP:top + 48 + figures.GAP:3, 0:24:3], images[1])


def test_sample_panels_pixel_size(tmp_path):
    panels = [digits(9, channels=3, seed=k) for k in range(5)]
    paths = figures.sample_grids(panels, LABELS[:5], tmp_path / "fig6", title="ODE sampler", panels_per_row=3,
                                 scale=2, gap_px=10)
    tile = 3 * (16 + figures.GAP) - figures.GAP
    assert png_shape(paths[0])[:2] == (figures.HEADER_PX + 2 * (tile + figures.TITLE_PX + 10) - 10, 3 * (tile + 10) - 10)
    assert paths[1].stat().st_size > 1000


def test_grid_bad_input(tmp_path):
    with pytest.raises(ValueError, match="one uint8 NHWC image set per eta label"):
        figures.sample_grids([], [], tmp_path / "x")
    with pytest.raises(ValueError, match="one uint8 NHWC image set per eta label"):
        figures.sample_grids([digits(2)], ["0.1", "0.2"], tmp_path / "x")
    with pytest.raises(ValueError, match="same number and shape"):
        figures.fixed_noise_grid([digits(2), digits(3)], ["0.1", "0.2"], tmp_path / "x")
    with pytest.raises(ValueError, match="row labels"):
        figures.fixed_noise_grid([digits(2)], ["0.1"], tmp_path / "x", row_labels=["only one"])
    with pytest.raises(TypeError, match="uint8"):
        figures.sample_grids([digits(2).astype(np.float32)], ["0.1"], tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_paper_tables_put_the_data_sets_side_by_side(tmp_path):
    cifar, imagenet = pd.DataFrame(records()), pd.DataFrame(records(shift=1.0))
    cifar["vlb"], imagenet["vlb"] = cifar["vlb_mean"], imagenet["vlb_mean"] + 1
    runs = {name: pd.concat([frame, frame.assign(vlb=frame["vlb"] + 0.02)]).drop(columns=["vlb_mean", "vlb_std"])
            for name, frame in (("CIFAR-10", cifar), ("ImageNet32", imagenet))}

    table1 = tables.paper_table1({"CIFAR-10": cifar, "ImageNet32": imagenet})
    assert list(table1.columns) == ["Dataset", "Metric", "EDM", "ηmin", "0.2", "0.4", "0.6", "ηmax", "VDM"]
    assert table1[["Dataset", "Metric"]].values.tolist() == [["CIFAR-10", "NLL"], ["CIFAR-10", "NFE"],
                                                             ["ImageNet32", "NLL"], ["ImageNet32", "NFE"]]
    np.testing.assert_allclose(table1.iloc[0, 2:].to_numpy(float), [2.6 + (e - 0.5) ** 2 for e in ETAS])

    both = {"CIFAR-10": pd.DataFrame(records("ode") + records("ancestral", shift=1.0)),
            "ImageNet32": pd.DataFrame(records("ode", shift=2.0))}
    table2 = tables.paper_table2(both)
    assert table2["Metric"].tolist() == ["FID (ODE)", "NFE (ODE)", "FID (ancestral)", "NFE (ancestral)",
                                         "FID (ODE)", "NFE (ODE)"]
    assert table2.loc[4, "VDM"] == pytest.approx(2 + 8 + 2.0)

    table4 = tables.paper_table4(runs)
    assert list(table4.columns) == ["Threshold", "CIFAR-10 Mean", "CIFAR-10 Std", "ImageNet32 Mean", "ImageNet32 Std"]
    assert table4["Threshold"].tolist() == ["EDM", "ηmin", "0.2", "0.4", "0.6", "ηmax", "VDM"]
    np.testing.assert_allclose(table4["CIFAR-10 Std"], np.std([0, 0.02], ddof=1))

    paths = tables.write_table(table1, tmp_path / "table1")
    markdown = paths[1].read_text()
    assert re.search(r"\| CIFAR-10 +\| NLL +\|", markdown) and " 2.85 |" in markdown and " 200 |" in markdown  # row decimals
    from expertmerge.table_registry import get_table

    assert get_table(3).paper_builder() is get_table(5).paper_builder()  # the literature tables' own builder
    with pytest.raises(ValueError, match="there is no Table 6; the tables are 1, 2, 3, 4, 5"):
        get_table(6)
