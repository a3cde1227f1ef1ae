"""One experiment's results at a glance: every eta's NLL, FID and VLB in one table, and the paper's
claims about the mechanism checked against them.

The claims (paper Sec. 5, Tables 1, 2 and 4) are what merging is for: the likelihood expert wins on
likelihood, the quality expert on FID, the likelihood gains start at the lowest noise levels (a
switch at eta_min already beats the quality expert), and some merge is at least as likely as the
likelihood expert while keeping the quality expert's FID within a budget. Inputs are the records the
tables are made from (see `tables`); the baselines are told apart by the plotting convention, eta = 0
for the quality expert and eta = 1 for the likelihood expert.

Beside the claims, `recommended_eta` answers the practical question: which merge to use when the quality
expert's FID may grow by at most a budget (config.yaml's recommend.fid_budget, 5% by default).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from .samplers import (NO_STEPPED_RECORDS, SAMPLERS, paper_samplers, parse_result, reference_sampler, result_title,
                       stepped_sampler)
from .tables import check_records, is_merged, nll_summary, short_label, vlb_summary

VLB_TERMS = ("prior", "reconstruction", "diffusion")  # Eq. 6, in bits/dim


def results_frame(nll, vlb, fid) -> pd.DataFrame:
    """One row per eta (in eta order): bpd_mean, bpd_sem, nfe_mean, fid_<sampler>, fid_spread_<sampler>,
    vlb_mean, vlb_std, and vlb_<term> (mean over runs) where the VLB records hold its terms."""
    frame = nll_summary(nll)[["eta_label", "eta", "bpd_mean", "bpd_sem", "nfe_mean"]]
    frame = frame.merge(vlb_summary(vlb)[["eta_label", "vlb_mean", "vlb_std"]], on="eta_label", how="outer")
    terms = [term for term in VLB_TERMS if term in vlb.columns]
    if terms and "vlb" in vlb.columns:  # per-run records: the terms' means over runs
        means = vlb.astype({"eta_label": str}).groupby("eta_label")[terms].mean().add_prefix("vlb_")
        frame = frame.merge(means, left_on="eta_label", right_index=True, how="left")
    fid = check_records(fid, ("sampler", "fid"))
    for sampler in paper_samplers():
        part = fid[fid["sampler"] == sampler].set_index("eta_label")
        frame[f"fid_{sampler}"] = frame["eta_label"].map(part["fid"])
        frame[f"fid_spread_{sampler}"] = frame["eta_label"].map(part.get("fid_spread", pd.Series(dtype=float)))
    missing = frame[frame[["bpd_mean", "vlb_mean", *(f"fid_{s}" for s in paper_samplers())]].isna().any(axis=1)]
    if len(missing):
        raise ValueError(f"etas {missing['eta_label'].tolist()} lack an NLL, VLB or FID "
                         f"({' and '.join(map(result_title, paper_samplers()))}) record")
    return frame.sort_values("eta", kind="stable").reset_index(drop=True)


def _baseline(frame: pd.DataFrame, eta: float) -> pd.Series:
    rows = frame[(~frame["eta_label"].map(is_merged)) & (frame["eta"] == eta)]
    if len(rows) != 1:
        raise ValueError(f"need exactly one unmerged baseline at eta = {eta:g} (quality expert 0, likelihood 1); "
                         f"got {rows['eta_label'].tolist()}")
    return rows.iloc[0]


def claims(frame: pd.DataFrame, fid_budget: float = 0.1) -> pd.DataFrame:
    """The paper's claims as rows (claim, measured, holds) for a `results_frame`."""
    quality, likelihood = _baseline(frame, 0.0), _baseline(frame, 1.0)
    q, lk = short_label(quality["eta_label"]), short_label(likelihood["eta_label"])
    merged = frame[frame["eta_label"].map(is_merged)]
    rows = []

    def claim(text: str, measured: str, holds: bool):
        rows.append({"claim": text, "measured": measured, "holds": bool(holds)})

    def versus(column: str, a: pd.Series, b: pd.Series, decimals: int) -> str:
        return f"{a[column]:.{decimals}f} vs {b[column]:.{decimals}f}"

    claim(f"{lk} has a lower ODE NLL than {q}", versus("bpd_mean", likelihood, quality, 3),
          likelihood["bpd_mean"] < quality["bpd_mean"])
    claim(f"{lk} has a lower VLB than {q}", versus("vlb_mean", likelihood, quality, 3),
          likelihood["vlb_mean"] < quality["vlb_mean"])
    for sampler in paper_samplers():
        claim(f"{q} has a lower FID ({sampler} sampler) than {lk}", versus(f"fid_{sampler}", quality, likelihood, 1),
              quality[f"fid_{sampler}"] < likelihood[f"fid_{sampler}"])
    at_min = merged[merged["eta_label"] == "eta_min"]
    if len(at_min):
        claim(f"ηmin has a lower ODE NLL than {q}: the gains start at the lowest noise levels",
              versus("bpd_mean", at_min.iloc[0], quality, 3), at_min.iloc[0]["bpd_mean"] < quality["bpd_mean"])
    if len(merged):
        best = merged.loc[merged["bpd_mean"].idxmin()]
        upto = merged[merged["eta"] <= best["eta"]]
        worse = upto[upto["bpd_mean"] >= quality["bpd_mean"]]
        claim(f"every η up to the best-NLL η ({short_label(best['eta_label'])}) has a lower ODE NLL than {q}",
              "all lower" if worse.empty else "not: " + ", ".join(map(short_label, worse["eta_label"])), worse.empty)
        fid_limit = (1 + fid_budget) * quality["fid_ode"]
        good = merged[(merged["bpd_mean"] <= likelihood["bpd_mean"]) & (merged["fid_ode"] <= fid_limit)]
        claim(f"some η has an ODE NLL ≤ {lk}'s and an ODE FID ≤ {1 + fid_budget:g} × {q}'s ({fid_limit:.1f})",
              ", ".join(f"{short_label(r.eta_label)}: {r.bpd_mean:.3f} bpd, FID {r.fid_ode:.1f}"
                        for r in good.itertuples()) or "none", len(good) > 0)
    grid = merged[merged["eta_label"] != "auto"]
    auto = merged[merged["eta_label"] == "auto"]
    if len(auto) and len(grid):  # the VLB-optimal merge (issue 13): no worse than the best eta of the grid
        best, chosen = grid.loc[grid["vlb_mean"].idxmin()], auto.iloc[0]
        claim(f"auto (the VLB-optimal merge from L(γ)) has a VLB ≤ the best grid η's ({short_label(best['eta_label'])}) "
              "+ one run std", f"{chosen['vlb_mean']:.3f} vs {best['vlb_mean']:.3f} + {best['vlb_std']:.3f}",
              chosen["vlb_mean"] <= best["vlb_mean"] + best["vlb_std"])
    return pd.DataFrame(rows)


RECOMMEND_FID_BUDGET = 0.05  # config.yaml's recommend.fid_budget default: FID within 5% of the quality expert's


class Recommendation(NamedTuple):
    """The merge `recommended_eta` picks (None when no merge qualifies), every merge within the FID limit
    (with its margin to the limit in units of its FID seed spread), and the limit itself."""
    row: pd.Series | None
    candidates: pd.DataFrame
    fid_limit: float
    fid_budget: float
    quality: str  # the quality expert's short label, e.g. "EDM"


def ode_frame(nll, fid) -> pd.DataFrame:
    """Per eta: the ODE NLL (bpd_mean, bpd_sem) and the ODE sampler's FID (fid_ode, fid_spread_ode; NaN where
    not measured), from NLL records and FID records (see `tables`): what `recommended_eta` reads."""
    frame = nll_summary(nll)[["eta_label", "eta", "bpd_mean", "bpd_sem"]]
    fid = check_records(fid, ("sampler", "fid"))
    ode = fid[fid["sampler"] == "ode"].set_index("eta_label")
    frame = frame.assign(fid_ode=frame["eta_label"].map(ode["fid"]),
                         fid_spread_ode=frame["eta_label"].map(ode.get("fid_spread", pd.Series(dtype=float))))
    return frame.sort_values("eta", kind="stable").reset_index(drop=True)


def recommended_eta(frame: pd.DataFrame, fid_budget: float = RECOMMEND_FID_BUDGET) -> Recommendation:
    """Among the merges (every merged eta label, "auto" included), the one with the lowest ODE NLL whose
    ODE FID <= (1 + fid_budget) x the quality expert's (the unmerged row at eta 0). `frame`: a
    `results_frame` or `ode_frame`. Candidates keep the frame's eta order; `margin` = (limit - FID) / spread."""
    if not fid_budget >= 0:
        raise ValueError(f"the FID budget is a fraction of the quality expert's FID, >= 0; got {fid_budget!r}")
    quality = _baseline(frame, 0.0)
    fid_limit = (1 + fid_budget) * quality["fid_ode"]
    merged = frame[frame["eta_label"].map(is_merged)]
    candidates = merged[merged["fid_ode"] <= fid_limit]
    spread = candidates["fid_spread_ode"] if "fid_spread_ode" in candidates else np.nan
    candidates = candidates.assign(margin=(fid_limit - candidates["fid_ode"]) / spread)
    row = None if candidates.empty else candidates.loc[candidates["bpd_mean"].idxmin()]
    return Recommendation(row, candidates, float(fid_limit), fid_budget, short_label(quality["eta_label"]))


def recommendation_markdown(recommendation: Recommendation) -> str:
    """The rule, the FID limit, every merge within it (NLL ± s.e., ODE FID ± seed spread, margin) and the pick."""
    r = recommendation
    text = (f"The merge with the lowest ODE NLL whose ODE FID ≤ {1 + r.fid_budget:g} × {r.quality}'s "
            f"= {r.fid_limit:.2f}.\n\n")
    if r.row is None:
        return text + "No merge has an ODE FID within this limit: no η is recommended.\n"

    def plus_minus(value, error, decimals):
        return f"{value:.{decimals}f}" + ("" if pd.isna(error) else f" ± {error:.{decimals}f}")

    lines = ["| η | NLL (bpd) | FID (ODE) | (limit − FID) / seed spread |", "|---|---|---|---|"]
    for row in r.candidates.itertuples():
        label = short_label(row.eta_label)
        label = f"**{label}** (recommended)" if row.eta_label == r.row["eta_label"] else label
        margin = "–" if not np.isfinite(row.margin) else f"{row.margin:.1f}"
        lines.append(f"| {label} | {plus_minus(row.bpd_mean, row.bpd_sem, 3)} | "
                     f"{plus_minus(row.fid_ode, getattr(row, 'fid_spread_ode', np.nan), 2)} | {margin} |")
    pick = r.row
    return (text + "\n".join(lines) + f"\n\nRecommended: {eta_name(pick['eta_label'], pick['eta'])}, "
            f"NLL {pick['bpd_mean']:.3f} bpd, ODE FID {pick['fid_ode']:.2f}.\n")


def eta_name(eta_label: str, eta: float) -> str:
    """'η = 0.3' for a numbered switch level; 'ηmin (η = 0.0394)', 'auto (η = 0.412)' for a named one."""
    try:
        return f"η = {float(eta_label):g}"
    except ValueError:
        return f"{short_label(eta_label)} (η = {eta:.4g})"


def results_markdown(frame: pd.DataFrame, named: dict | None = None) -> str:
    """The results table as Markdown: value ± error per cell, the best NLL and VLB in bold; a named merge's row
    (`named`: {label: what it merges}) says what it is."""
    best = {column: frame[column].min() for column in ("bpd_mean", "vlb_mean")}

    def cell(row, value, error, decimals, bold=None):
        text = f"{row[value]:.{decimals}f}"
        text = f"**{text}**" if bold and row[value] == best[value] else text
        return text if pd.isna(row[error]) else f"{text} ± {row[error]:.{decimals}f}"

    fids = paper_samplers()
    head = ["η", "NLL (bpd)", "NFE", *(f"FID ({result_title(sampler)})" for sampler in fids), "VLB (bpd)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for _, row in frame.iterrows():
        label = short_label(row["eta_label"])
        label = f"{label} = {row['eta']:.4f}" if row["eta_label"] in ("eta_min", "eta_max") else label
        label = label if is_merged(row["eta_label"]) else f"{label} alone"
        label = f"{row['eta_label']}: {named[row['eta_label']]}" if row["eta_label"] in (named or {}) else label
        lines.append(f"| {label} | {cell(row, 'bpd_mean', 'bpd_sem', 3, True)} | {row['nfe_mean']:.0f} | "
                     + "".join(f"{cell(row, f'fid_{sampler}', f'fid_spread_{sampler}', 1)} | " for sampler in fids)
                     + f"{cell(row, 'vlb_mean', 'vlb_std', 3, True)} |")
    return "\n".join(lines) + "\n"


def vlb_terms_markdown(frame: pd.DataFrame) -> str:
    """The VLB's terms per eta (bits/dim, means over runs): where each model's bound comes from."""
    lines = ["| η | prior | reconstruction | diffusion | VLB |", "|---|---|---|---|---|"]
    for _, row in frame.iterrows():
        terms = " | ".join(f"{row[f'vlb_{term}']:.3f}" for term in VLB_TERMS)
        lines.append(f"| {short_label(row['eta_label'])} | {terms} | {row['vlb_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def claims_markdown(table: pd.DataFrame) -> str:
    lines = ["| claim | measured | holds |", "|---|---|---|"]
    lines += [f"| {r.claim} | {r.measured} | {'yes' if r.holds else '**no**'} |" for r in table.itertuples()]
    return "\n".join(lines) + "\n"


def predicted_markdown(frame: pd.DataFrame, predicted: pd.DataFrame) -> str:
    """Each eta's VLB predicted from the experts' L(gamma) (a `predict-vlb` CSV) beside the measured one, and
    their difference in units of the measured VLB's std over runs."""
    merged = frame.merge(predicted[["eta_label", "predicted_vlb"]], on="eta_label", how="inner")
    lines = ["| η | predicted (bpd) | measured (bpd) | difference / run std |", "|---|---|---|---|"]
    for row in merged.itertuples():
        difference = (row.predicted_vlb - row.vlb_mean) / row.vlb_std
        lines.append(f"| {short_label(row.eta_label)} | {row.predicted_vlb:.3f} | {row.vlb_mean:.3f} ± "
                     f"{row.vlb_std:.3f} | {difference:+.2f} |")
    return "\n".join(lines) + "\n"


def profile_markdown(profile: pd.DataFrame, step: float = 2.0) -> str:
    """Each expert's L(gamma) (a `loss-profile` CSV) at grid points about `step` apart, and the gammas
    (and etas, Eq. 14) where the two curves cross."""
    from .loss_profile import crossings

    wide = profile.pivot_table(index="gamma", columns="expert", values="loss").sort_index()
    names = profile.drop_duplicates("role").set_index("role")["expert"]  # the pair's; others have role "other"
    others = [name for name in profile.loc[~profile["role"].isin(("quality", "likelihood")), "expert"].unique()]
    gamma_0, gamma_1 = float(profile["gamma_0"].iloc[0]), float(profile["gamma_1"].iloc[0])
    targets = np.arange(np.ceil(gamma_0), np.floor(gamma_1) + 1e-9, step)  # whole gammas `step` apart
    shown = wide.iloc[sorted({int(np.abs(wide.index - target).argmin()) for target in targets})]  # nearest grid points
    cell = lambda v: "–" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
    lines = ["| γ | " + " | ".join(f"{g:.1f}" for g in shown.index) + " |", "|---" * (len(shown) + 1) + "|"]
    for expert in (names["quality"], names["likelihood"], *others):
        lines.append(f"| {expert.upper()} | " + " | ".join(cell(v) for v in shown[expert]) + " |")
    found = crossings(wide.index, wide[names["quality"]], wide[names["likelihood"]])
    where = ", ".join(f"γ = {g:.2f} (η = {(g - gamma_0) / (gamma_1 - gamma_0):.3f})" for g, _ in found)
    pair = f"{names['quality'].upper()}'s and {names['likelihood'].upper()}'s curves" if others else "The curves"
    return "\n".join(lines) + f"\n\n{pair[0].upper() + pair[1:]} cross at {where or 'no measured gamma'}.\n"


FEW_STEP_GOAL = (0.05, 0.25)  # issue 14: within 5% of the adaptive ODE's FID at <= 1/4 of its NFE


def few_step_frame(fid) -> pd.DataFrame:
    """Per eta (in eta order): the reference adaptive ODE's FID and NFE (fid_ode, nfe_ode), and for the samplers
    run at several step counts (Heun; `expertmerge.samplers`) each result's FID and NFE, and the ratios of the
    one with the most NFE to the ODE's; `fewest_nfe` is the fewest such NFE whose FID is within 5% of the
    ODE's (NaN if none), and `goal` whether that is at most a quarter of the ODE's NFE."""
    records = check_records(fid, ("sampler", "fid", "nfe_mean"))
    stepped = records[records["sampler"].map(stepped_sampler).notna()]
    if stepped.empty:
        raise ValueError(NO_STEPPED_RECORDS)
    ode = records[records["sampler"] == reference_sampler()].set_index("eta_label")
    rows = []
    for label, runs in stepped.groupby("eta_label", sort=False):
        runs = runs.sort_values("nfe_mean")
        last, reference = runs.iloc[-1], ode.loc[label]
        within = runs[runs["fid"] <= (1 + FEW_STEP_GOAL[0]) * reference["fid"]]
        fewest = float(within["nfe_mean"].min()) if len(within) else np.nan
        rows.append({"eta_label": label, "eta": float(reference["eta"]), "fid_ode": reference["fid"],
                     "nfe_ode": reference["nfe_mean"], **{f"fid_{r.sampler}": r.fid for r in runs.itertuples()},
                     **{f"nfe_{r.sampler}": r.nfe_mean for r in runs.itertuples()},
                     "fid_ratio": last["fid"] / reference["fid"], "nfe_ratio": last["nfe_mean"] / reference["nfe_mean"],
                     "fewest_nfe": fewest, "goal": bool(fewest <= FEW_STEP_GOAL[1] * reference["nfe_mean"])})
    return pd.DataFrame(rows).sort_values("eta", kind="stable").reset_index(drop=True)


def few_step_markdown(frame: pd.DataFrame) -> str:
    """`few_step_frame` as Markdown: FID (NFE) per sampler, the ratios at the most NFE, the goal."""
    results = [c[4:] for c in frame.columns if c.startswith("fid_") and stepped_sampler(c[4:])]
    stepped = sorted(results, key=lambda s: (list(SAMPLERS).index(stepped_sampler(s)), *parse_result(s)[1].values()))
    last, ode = max(stepped, key=lambda s: frame[f"nfe_{s}"].max()), result_title(reference_sampler())
    head = ["η", f"{ode} FID (NFE)", *(f"{result_title(s)} FID (NFE)" for s in stepped),
            f"FID ratio {result_title(last)} / {ode}", "NFE ratio", "fewest NFE within 5%", f"≤ ¼ of the {ode}'s NFE"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in frame.to_dict("records"):
        cells = [short_label(row["eta_label"]), f"{row['fid_ode']:.1f} ({row['nfe_ode']:.0f})",
                 *(f"{row[f'fid_{s}']:.1f} ({row[f'nfe_{s}']:.0f})" for s in stepped),
                 f"{row['fid_ratio']:.3f}", f"{row['nfe_ratio']:.3f}",
                 "none" if np.isnan(row["fewest_nfe"]) else f"{row['fewest_nfe']:.0f}", "yes" if row["goal"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
