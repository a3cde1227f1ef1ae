"""Figures 2-9 of the paper (matplotlib, Agg): the eta trade-off plot and sample grids; and the
per-noise-level loss L(gamma) of both experts (a diagnostic).

Inputs are result records as described in `tables` (eta_label, eta, bpd_mean, ...) and uint8 NHWC
images (1 or 3 channels). Every figure is written as stem.png and stem.pdf via temporary names.
Image grids are laid out in whole pixels: each image pixel becomes a `scale` x `scale` block, so the
PNG's size is known in advance and nothing is resampled.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .files import atomic_path  # noqa: E402
from .noise import linear_gamma, linear_gamma_time  # noqa: E402
from .profile_files import OTHER_ROLE  # noqa: E402
from .samplers import NO_STEPPED_RECORDS, get_sampler, reference_sampler, result_title, stepped_sampler  # noqa: E402
from .tables import check_records, is_merged, nll_summary, short_label, vlb_summary  # noqa: E402

DPI = 100
GAP = 2         # pixels between images in a grid
TITLE_PX = 22   # height of a title band above a column or panel
LABEL_PX = 60   # width of the row-label band of the fixed-noise grid
HEADER_PX = 30  # height of the overall title band of the sample grids


def uint8_images(images) -> np.ndarray:
    """uint8 [N, H, W, C] images (C in 1, 3) as a numpy array; checked here rather than with
    images.check_images, whose torch import the figure jobs do not need."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 [N, H, W, C] (8-bit levels 0..255), got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images must have shape [N, H, W, C] with N >= 1 and C in (1, 3), got {images.shape}")
    return images


def column_title(eta_label: str) -> str:
    """Short title of an eta label: 'EDM', 'ηmin', 'η=0.3', 'ηmax', 'VDM' (other text unchanged)."""
    label = str(eta_label)
    if label in ("eta_min", "eta_max"):
        return "η" + label[4:]
    if is_merged(label):
        return f"η={label}"
    return label.upper() if label.isascii() else label


def save_figure(fig, stem, dpi: int = DPI) -> list[Path]:
    """Write stem.png and stem.pdf (each to a temporary name, then renamed) and close the figure.
    A stem ending in .png or .pdf is taken without that suffix."""
    stem = Path(stem)
    stem = stem.with_suffix("") if stem.suffix in (".png", ".pdf") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi)
        paths.append(path)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------
# Fig. 2 / 4: NLL (left axis) and FID (right axis) against eta.


AUTO = "auto"  # the VLB-optimal merge: plotted at its first switch, a position rather than a point of the eta line
AUTO_MARKER = dict(marker="P", ms=9, mec="black", mew=0.6, linestyle="none")


def _curve(ax, df: pd.DataFrame, value: str, error: str | None, label: str, style: dict):
    """Merged models at one switch level as a line with error bars; unmerged baselines as distinct squares
    joined by dotted lines to the nearest of them; the "auto" merge as a filled plus (AUTO_MARKER), apart."""
    df = df[np.isfinite(df["eta"].astype(float))].sort_values("eta", kind="stable")  # NaN: off the eta axis
    baseline, auto = ~df["eta_label"].map(is_merged), df["eta_label"] == AUTO
    merged = df[~baseline & ~auto]
    yerr = (lambda part: part[error]) if error in df.columns else (lambda part: None)
    ax.errorbar(merged["eta"], merged[value], yerr=yerr(merged), label=label, capsize=2, **style)
    for _, row in df[baseline].iterrows():
        nearest = merged.iloc[(merged["eta"] - row["eta"]).abs().argmin()] if len(merged) else row
        ax.plot([row["eta"], nearest["eta"]], [row[value], nearest[value]], ":", color=style["color"])
        ax.plot(row["eta"], row[value], "s", ms=8, mfc="white", mew=1.5, color=style["color"])
    if auto.any():
        ax.errorbar(df.loc[auto, "eta"], df.loc[auto, value], yerr=yerr(df[auto]), capsize=2, color=style["color"],
                    zorder=4, **AUTO_MARKER)


def _eta_range(frames, eta_range):
    """(eta_min, eta_max) as given, else read from rows labelled eta_min / eta_max."""
    if eta_range is not None:
        return eta_range
    rows = pd.concat([f[["eta_label", "eta"]] for f in frames])
    found = [rows.loc[rows["eta_label"] == k, "eta"] for k in ("eta_min", "eta_max")]
    return tuple(float(f.iloc[0]) if len(f) else None for f in found)


def _mark_recommendation(left, right, nll, fid, fid_budget: float, color: str):
    """The ODE FID limit (1 + fid_budget) x the quality expert's as a dotted line on the FID axis, and the
    recommended merge (`summary.recommended_eta`) as a star on the ODE NLL curve with a thin vertical line."""
    from .summary import ode_frame, recommended_eta

    recommendation = recommended_eta(ode_frame(nll, fid), fid_budget)
    within = "" if recommendation.row is not None else "; no merge within"
    right.axhline(recommendation.fid_limit, color=color, linestyle=":", linewidth=1.2,
                  label=f"ODE FID limit ({1 + fid_budget:g}×{recommendation.quality}{within})")
    if recommendation.row is not None:
        eta, bpd = recommendation.row["eta"], recommendation.row["bpd_mean"]
        left.axvline(eta, color="black", linewidth=0.6, alpha=0.6)
        low, high = left.get_ylim()
        at_top = (bpd - low) / (high - low) < 0.5  # the label goes to the end of the line away from the star
        left.text(eta, 0.98 if at_top else 0.02, "recommended", transform=left.get_xaxis_transform(), rotation=90,
                  ha="right", va="top" if at_top else "bottom", fontsize=7,
                  bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=1))
        left.plot(eta, bpd, marker="*", ms=15, color="C0", mec="black", mew=0.8, linestyle="none", zorder=5,
                  label="recommended η")


def tradeoff_figure(nll_ode, nll_vlb, fid, stem, *, eta_range=None, title=None, fid_budget=None) -> list[Path]:
    """Fig. 2: ODE NLL (bpd_mean ± bpd_sem) and VLB (vlb_mean ± vlb_std) on the left axis, FID per
    sampler (fid ± fid_spread) on the right, against eta; dashed lines at eta_min and eta_max; an "auto"
    row as its own marker. Given `fid_budget` (and ODE NLL and ODE FID records), the ODE FID limit and the
    recommended merge are marked (`_mark_recommendation`).
    Any of the three record sets may be None; per-image / per-run rows are reduced as in `tables`."""
    parts = {"ode": None if nll_ode is None else nll_summary(nll_ode),
             "vlb": None if nll_vlb is None else vlb_summary(nll_vlb),
             "fid": None if fid is None else check_records(fid, ("sampler", "fid"))}
    if all(p is None for p in parts.values()):
        raise ValueError("tradeoff_figure needs at least one of nll_ode, nll_vlb, fid")
    fig, left = plt.subplots(figsize=(6.4, 4.0))
    right = left.twinx()
    if parts["ode"] is not None:
        _curve(left, parts["ode"], "bpd_mean", "bpd_sem", "NLL, ODE", dict(color="C0", marker="o"))
    if parts["vlb"] is not None:
        _curve(left, parts["vlb"], "vlb_mean", "vlb_std", "NLL, VLB", dict(color="C1", marker="^"))
    fid_colors = {}
    for k, (sampler, df) in enumerate(parts["fid"].groupby("sampler", sort=False) if parts["fid"] is not None else []):
        style = dict(color=f"C{k + 2}", marker="D", linestyle="--")
        _curve(right, df, "fid", "fid_spread", f"FID, {result_title(sampler)} sampler", style)
        fid_colors[sampler] = style["color"]
    if fid_budget is not None and parts["ode"] is not None and "ode" in fid_colors:
        _mark_recommendation(left, right, parts["ode"], parts["fid"], fid_budget, fid_colors["ode"])
    for eta, name in zip(_eta_range([p for p in parts.values() if p is not None], eta_range), ("min", "max")):
        if eta is not None:
            left.axvline(eta, color="gray", linestyle="--", linewidth=1)
            left.text(eta, 1.01, f"η{name}", transform=left.get_xaxis_transform(), ha="center", fontsize=8)
    _eta_ticks(left, [p for p in parts.values() if p is not None])
    left.set(xlabel="switch threshold η", ylabel="NLL (bits/dim)", xlim=(-0.05, 1.05))
    right.set_ylabel("FID")
    handles, labels = (sum(pair, []) for pair in zip(*(ax.get_legend_handles_labels() for ax in (left, right))))
    handles.append(Line2D([], [], color="gray", linestyle=":", marker="s", mfc="white", label="unmerged baseline"))
    labels.append("unmerged baseline")
    if any(p is not None and (p["eta_label"] == AUTO).any() for p in parts.values()):
        handles.append(Line2D([], [], color="gray", **AUTO_MARKER))
        labels.append("auto (VLB-optimal)")
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    if title:
        left.set_title(title, pad=14)
    fig.tight_layout(rect=(0, 0.05 * math.ceil(len(labels) / 3), 1, 1))
    return save_figure(fig, stem, dpi=150)


def predicted_vlb_figure(vlb, predicted, stem, *, title=None) -> list[Path]:
    """The VLB measured (mean ± std over runs, per-run rows reduced as in `tables`) and the VLB predicted from
    the experts' L(gamma) (`predict-vlb` records), against eta."""
    measured, predicted = vlb_summary(vlb), check_records(predicted, ("predicted_vlb",))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    _curve(ax, measured, "vlb_mean", "vlb_std", "VLB measured (mean ± std over runs)", dict(color="C1", marker="^"))
    _curve(ax, predicted, "predicted_vlb", None, "VLB predicted from L(γ)", dict(color="C4", marker="x", linestyle="--"))
    _eta_ticks(ax, [measured, predicted])
    ax.set(xlabel="switch threshold η", ylabel="VLB (bits/dim)", xlim=(-0.05, 1.05))
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, stem, dpi=150)


def fid_vs_nfe_figure(fid, stem, *, etas: Sequence[str], title=None) -> list[Path]:
    """FID against NFE per image (log scale) for each eta label in `etas`: each sampler run at several step
    counts (Heun) as a line (± seed spread), and the reference adaptive ODE's (NFE, FID) as an open marker of
    the same colour. `fid`: FID records of every sampler ("heun<steps>" for Heun)."""
    records = check_records(fid, ("sampler", "fid", "nfe_mean"))
    missing = [label for label in map(str, etas) if label not in set(records["eta_label"])]
    if missing:
        raise ValueError(f"no FID records for eta(s) {missing}; the records hold {sorted(set(records['eta_label']))}")
    declared = records["sampler"].map(stepped_sampler)
    if declared.isna().all():
        raise ValueError(NO_STEPPED_RECORDS)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, label in enumerate(map(str, etas)):
        rows, color = records[records["eta_label"] == label], f"C{k}"
        name = f"{label.upper()} alone" if not is_merged(label) else label if label == "auto" else f"η = {short_label(label)}"
        for marker, sampler in zip("os^v<>", declared.dropna().unique()):
            steps = rows[declared.loc[rows.index] == sampler].sort_values("nfe_mean")
            ax.errorbar(steps["nfe_mean"], steps["fid"], yerr=steps.get("fid_spread"), color=color, marker=marker,
                        capsize=2, label=f"{name}: {get_sampler(sampler).title}")
        for row in rows[rows["sampler"] == reference_sampler()].itertuples():
            ax.plot(row.nfe_mean, row.fid, "D", ms=9, mfc="white", mew=1.5, color=color)
    ax.plot([], [], "D", ms=9, mfc="white", mew=1.5, color="gray", label="adaptive ODE (RK45)")
    ax.set(xscale="log", xlabel="NFE per image", ylabel="FID")
    ax.legend(fontsize=8, frameon=False, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, stem, dpi=150)


def _eta_ticks(ax, frames):
    """Ticks every 0.2; a tick at a baseline's plotting position shows the baseline's name instead."""
    ticks = {round(t, 1): f"{t:.1f}" for t in np.linspace(0, 1, 6)}
    rows = pd.concat([f[["eta_label", "eta"]] for f in frames]).drop_duplicates()
    for label, eta in rows[~rows["eta_label"].map(is_merged)].itertuples(index=False):
        ticks[eta] = label.upper()
    ax.set_xticks(list(ticks), list(ticks.values()))


# ----------------------------------------------------------------------------
# Diagnostic: the per-noise-level loss L(gamma) of both experts (expertmerge.loss_profile).

PROFILE_COLUMNS = ("role", "expert", "gamma", "loss", "standard_error", "eta_min", "eta_max", "gamma_0", "gamma_1")
BITS_PER_UNIT_GAMMA = 1 / (2 * math.log(2))  # d(diffusion term, bits/dim)/d gamma at L = 1 (Eq. 7)


def loss_profile_figure(profile: pd.DataFrame, stem, *, etas: Sequence[float] = (), auto: Sequence[float] = (),
                        merges: dict | None = None, title=None) -> list[Path]:
    """L(gamma) of the quality and likelihood experts (log scale) with ±1 standard-error bands; dashed lines
    at gamma(eta_min) and gamma(eta_max), light lines at the gamma of each of `etas` (Eq. 14, eta also on the
    top axis), open circles where the curves cross, and solid lines at the VLB-optimal merge's switches
    (`auto`, as etas). The right axis reads L as the VLB's integrand in bits/dim per unit gamma. `profile`
    holds the rows of `expertmerge loss-profile`; experts beyond the pair are drawn too, and each of `merges`
    ({name: an auto-merge .json's contents}) as a strip at the bottom coloured by the expert serving each piece."""
    from .loss_profile import crossings  # here, not at the top: the other figures' jobs need no torch

    missing = [column for column in PROFILE_COLUMNS if column not in profile.columns]
    if missing:
        raise ValueError(f"loss profile lacks column(s) {missing}; expected {list(PROFILE_COLUMNS)}")
    gamma_0, gamma_1, eta_min, eta_max = (float(profile[column].iloc[0])
                                          for column in ("gamma_0", "gamma_1", "eta_min", "eta_max"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curves = {}
    for k, role in enumerate(("quality", "likelihood")):
        rows = profile[profile["role"] == role].sort_values("gamma")
        if rows.empty:
            raise ValueError(f"loss profile has no rows for the {role} expert")
        gamma, loss, error = rows["gamma"], rows["loss"], rows["standard_error"]
        ax.plot(gamma, loss, color=f"C{k}", label=f"{str(rows['expert'].iloc[0]).upper()} ({role})")
        low = (loss - error).clip(lower=loss / 10)  # a band below zero cannot be drawn on a log axis
        ax.fill_between(gamma, low, loss + error, color=f"C{k}", alpha=0.25, linewidth=0)
        curves[role] = rows.set_index("gamma")["loss"]
    colors = {str(profile.loc[profile["role"] == role, "expert"].iloc[0]): f"C{k}"
              for k, role in enumerate(("quality", "likelihood"))}
    for k, (name, rows) in enumerate(profile[profile["role"] == OTHER_ROLE].groupby("expert", sort=False)):
        colors[str(name)] = f"C{k + 4}"  # C2, C3: the crossings' and auto's colours
        rows = rows.sort_values("gamma")
        ax.plot(rows["gamma"], rows["loss"], color=colors[str(name)], label=str(name).upper())
        ax.fill_between(rows["gamma"], (rows["loss"] - rows["standard_error"]).clip(lower=rows["loss"] / 10),
                        rows["loss"] + rows["standard_error"], color=colors[str(name)], alpha=0.25, linewidth=0)
    _merge_strips(ax, merges or {}, colors)
    both = pd.concat(curves, axis=1).sort_index()  # one grid: NaN where an expert is out of its range
    crossed = crossings(both.index, both["quality"], both["likelihood"])
    if crossed:
        ax.plot(*zip(*crossed), "o", ms=7, mfc="white", mec="black", label="curves cross", zorder=3)
    for eta in etas:
        ax.axvline(linear_gamma(eta, gamma_0, gamma_1), color="gray", alpha=0.3, linewidth=0.8)
    for k, eta in enumerate(auto):
        ax.axvline(linear_gamma(eta, gamma_0, gamma_1), color="C3", linewidth=1.5,
                   label=None if k else f"auto switch{'es' if len(auto) > 1 else ''} (VLB-optimal)")
    for eta, name in ((eta_min, "min"), (eta_max, "max")):
        ax.axvline(linear_gamma(eta, gamma_0, gamma_1), color="gray", linestyle="--", linewidth=1)
        ax.text(linear_gamma(eta, gamma_0, gamma_1), 0.02, f" η{name}", transform=ax.get_xaxis_transform(),
                rotation=90, ha="right", va="bottom", fontsize=8, color="dimgray")
    ax.set(yscale="log", xlim=(min(gamma_0, profile["gamma_min"].min()), max(gamma_1, profile["gamma_max"].max())),
           xlabel="γ = log s² (negative log-SNR)",
           ylabel="L(γ) = E‖(D(x+sε; s) − x)/s‖² / dim")
    top = ax.secondary_xaxis("top", functions=(lambda g: linear_gamma_time(g, gamma_0, gamma_1),
                                               lambda eta: linear_gamma(eta, gamma_0, gamma_1)))
    top.set_xlabel("switch level η", fontsize=9)
    if len(etas):
        top.set_xticks(list(etas), [f"{eta:g}" for eta in etas], fontsize=7)
    right = ax.secondary_yaxis("right", functions=(lambda loss: loss * BITS_PER_UNIT_GAMMA,
                                                   lambda bits: bits / BITS_PER_UNIT_GAMMA))
    right.set_ylabel("bits/dim per unit γ (VLB integrand)", fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=3, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, stem, dpi=150)


def _merge_strips(ax, merges: dict, colors: dict) -> None:
    """One strip per auto merge along the bottom of `ax`: its pieces coloured by the expert that serves them."""
    for j, (name, chosen) in enumerate(merges.items()):
        edges = [chosen["gamma_0"], *chosen["switch_gammas"], chosen["gamma_1"]]
        y = 0.03 + 0.06 * j
        for lo, hi, expert in zip(edges[:-1], edges[1:], chosen["experts"]):
            ax.axvspan(lo, hi, ymin=y, ymax=y + 0.04, color=colors.get(expert, "gray"), alpha=0.8, linewidth=0)
        ax.text(chosen["gamma_0"], y + 0.02, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="center",
                ha="left", bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))


# ----------------------------------------------------------------------------
# Figs. 3 / 5 (fixed noise, one column per eta) and 6-9 (random samples, one panel per eta).


def mosaic(images, columns: int, scale: int = 1, gap: int = GAP) -> np.ndarray:
    """uint8 NHWC -> one uint8 HxWxC image: `columns` per row, each pixel scale x scale, white gaps."""
    images = uint8_images(images)
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    cell_h, cell_w = h * scale + gap, w * scale + gap
    out = np.full((rows * cell_h - gap, columns * cell_w - gap, c), 255, dtype=np.uint8)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    for i, image in enumerate(big):
        r, q = divmod(i, columns)
        out[r * cell_h:r * cell_h + h * scale, q * cell_w:q * cell_w + w * scale] = image
    return out


def _show(fig, array: np.ndarray, left_px: int, top_px: int):
    """Draw `array` pixel-exact with its top-left corner at (left_px, top_px) in figure pixels."""
    fig_w, fig_h = fig.get_size_inches() * DPI
    h, w = array.shape[:2]
    ax = fig.add_axes((left_px / fig_w, 1 - (top_px + h) / fig_h, w / fig_w, h / fig_h))
    ax.imshow(array.squeeze(-1) if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return ax


def _check_panels(panels: Sequence, labels: Sequence[str]) -> list:
    """[(column title, images)] for matching sequences of uint8 NHWC image sets and eta labels."""
    if len(panels) == 0 or len(panels) != len(labels):
        raise ValueError(f"need one uint8 NHWC image set per eta label, got {len(panels)} image sets "
                         f"for {len(labels)} labels")
    columns = [(column_title(label), uint8_images(images)) for images, label in zip(panels, labels)]
    shapes = {tuple(images.shape) for _, images in columns}
    if len(shapes) != 1:
        raise ValueError(f"every eta needs the same number and shape of images, got shapes {sorted(shapes)}")
    return columns


def _default_scale(images, target_px: int) -> int:
    return max(1, round(target_px / images.shape[1]))


def fixed_noise_grid(panels: Sequence, columns: Sequence[str], stem, *, row_labels: Sequence[str] | None = None,
                     scale: int | None = None) -> list[Path]:
    """Fig. 3: panels[k] = images [R, H, W, C] at eta label columns[k]; row r of every column starts
    from the same noise z1 (the same seed). Optional row labels on the left."""
    columns = _check_panels(panels, columns)
    count, h, w, _ = columns[0][1].shape
    if row_labels is not None and len(row_labels) != count:
        raise ValueError(f"got {len(row_labels)} row labels for {count} rows of images")
    scale = scale or _default_scale(columns[0][1], 64)
    stacked = np.stack([images for _, images in columns], axis=1).reshape(-1, *columns[0][1].shape[1:])
    grid = mosaic(stacked, len(columns), scale)  # row r = one noise sample, column = one eta
    label_px = LABEL_PX if row_labels is not None else 0
    fig_w, fig_h = grid.shape[1] + label_px, grid.shape[0] + TITLE_PX
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI))
    _show(fig, grid, label_px, TITLE_PX)
    for q, (title, _) in enumerate(columns):
        x = label_px + q * (w * scale + GAP) + w * scale / 2
        fig.text(x / fig_w, 1 - (TITLE_PX / 2) / fig_h, title, ha="center", va="center", fontsize=9)
    for r, label in enumerate(row_labels or []):
        y = TITLE_PX + r * (h * scale + GAP) + h * scale / 2
        fig.text((label_px - 4) / fig_w, 1 - y / fig_h, str(label), ha="right", va="center", fontsize=8)
    return save_figure(fig, stem)


def sample_grids(panels: Sequence, columns: Sequence[str], stem, *, title: str | None = None,
                 panels_per_row: int = 4, images_per_row: int | None = None, scale: int | None = None,
                 gap_px: int = 12) -> list[Path]:
    """Figs. 6-9: panels[k] = random samples [N, H, W, C] at eta label columns[k], one titled panel each;
    `title` (e.g. 'ODE sampler') goes in a band above all panels."""
    panels = _check_panels(panels, columns)
    count = len(panels[0][1])
    images_per_row = images_per_row or math.ceil(math.sqrt(count))
    scale = scale or _default_scale(panels[0][1], 32)
    tiles = [mosaic(images, images_per_row, scale) for _, images in panels]
    tile_h, tile_w = tiles[0].shape[:2]
    cols, rows = min(panels_per_row, len(tiles)), math.ceil(len(tiles) / panels_per_row)
    top = HEADER_PX if title else 0
    cell_w, cell_h = tile_w + gap_px, tile_h + TITLE_PX + gap_px
    fig_w, fig_h = cols * cell_w - gap_px, top + rows * cell_h - gap_px
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI))
    if title:
        fig.text(0.5, 1 - (HEADER_PX / 2) / fig_h, title, ha="center", va="center", fontsize=11)
    for k, ((name, _), tile) in enumerate(zip(panels, tiles)):
        r, q = divmod(k, panels_per_row)
        _show(fig, tile, q * cell_w, top + r * cell_h + TITLE_PX)
        fig.text((q * cell_w + tile_w / 2) / fig_w, 1 - (top + r * cell_h + TITLE_PX / 2) / fig_h, name,
                 ha="center", va="center", fontsize=9)
    return save_figure(fig, stem)
