"""The results-at-a-glance table and the paper's claims checked on measured records."""
import pandas as pd
import pytest

from expertmerge import literature
from expertmerge.summary import (claims, claims_markdown, ode_frame, profile_markdown, recommendation_markdown,
                                 recommended_eta, results_frame, results_markdown)

# eta_label -> (eta, NLL, VLB, FID ode, FID ancestral): shaped like the paper's CIFAR-10 numbers
PAPER_LIKE = {
    "edm": (0.0, 3.21, 3.30, 2.0, 3.0),
    "eta_min": (0.0394, 3.09, 3.20, 2.0, 3.0),
    "0.1": (0.1, 2.80, 2.90, 2.1, 3.1),
    "0.3": (0.3, 2.60, 2.70, 2.15, 3.2),
    "0.5": (0.5, 2.62, 2.72, 4.0, 5.0),
    "vdm": (1.0, 2.64, 2.65, 7.0, 6.0),
}


def records(rows):
    nll, vlb, fid = [], [], []
    for label, (eta, bpd, bound, fid_ode, fid_anc) in rows.items():
        for image, offset in enumerate((-0.1, 0.0, 0.1)):  # per-image rows, mean = bpd
            nll.append(dict(eta_label=label, eta=eta, bpd=bpd + offset, nfe=100 + image))
        vlb += [dict(eta_label=label, eta=eta, run=run, vlb=bound + offset) for run, offset in ((1, -0.01), (2, 0.01))]
        fid += [dict(eta_label=label, eta=eta, sampler=s, fid=v, fid_spread=0.1, nfe_mean=50)
                for s, v in (("ode", fid_ode), ("ancestral", fid_anc))]
    return pd.DataFrame(nll), pd.DataFrame(vlb), pd.DataFrame(fid)


def test_results_frame_reduces_records_per_eta_in_eta_order():
    frame = results_frame(*records(PAPER_LIKE))
    assert frame["eta_label"].tolist() == list(PAPER_LIKE)
    row = frame.set_index("eta_label").loc["0.3"]
    assert row["bpd_mean"] == pytest.approx(2.60) and row["bpd_sem"] == pytest.approx(0.1 / 3**0.5)
    assert row["vlb_mean"] == pytest.approx(2.70) and row["vlb_std"] == pytest.approx(0.02 * 0.5**0.5)
    assert (row["fid_ode"], row["fid_ancestral"], row["nfe_mean"]) == (2.15, 3.2, 101)


def test_paper_like_results_satisfy_every_claim():
    table = claims(results_frame(*records(PAPER_LIKE)))
    assert table["holds"].all(), table
    assert len(table) == 7
    last = table.iloc[-1]
    assert "0.3: 2.600 bpd, FID 2.1" in last["measured"] and "0.1" not in last["measured"]  # 0.1: NLL above VDM's


@pytest.mark.parametrize("change, failing", [
    (dict(vdm=(1.0, 3.30, 2.65, 7.0, 6.0)), "VDM has a lower ODE NLL"),
    (dict(eta_min=(0.0394, 3.25, 3.2, 2.0, 3.0)), ("ηmin has a lower ODE NLL", "every η up to the best-NLL η")),
    (dict(vdm=(1.0, 2.64, 2.65, 1.9, 6.0)), "EDM has a lower FID (ode sampler)"),
    (dict(vdm=(1.0, 2.55, 2.65, 7.0, 6.0)), "some η has an ODE NLL"),         # no merge as likely as VDM
    (dict(**{"0.3": (0.3, 2.60, 2.70, 2.25, 3.2)}), "some η has an ODE NLL"),  # FID 2.25 > 1.1 x 2.0
    (dict(**{"0.1": (0.1, 3.22, 2.90, 2.1, 3.1)}), "every η up to the best-NLL η"),
])
def test_each_claim_can_fail(change, failing):
    table = claims(results_frame(*records({**PAPER_LIKE, **change})))
    failed = table.loc[~table["holds"], "claim"].tolist()
    failing = (failing,) if isinstance(failing, str) else failing
    assert len(failed) == len(failing) and all(f.startswith(p) for f, p in zip(failed, failing)), table


def test_missing_measurements_and_baselines_are_named():
    nll, vlb, fid = records(PAPER_LIKE)
    with pytest.raises(ValueError, match=r"\['0.5'\] lack"):
        results_frame(nll, vlb, fid[~((fid["eta_label"] == "0.5") & (fid["sampler"] == "ancestral"))])
    nll, vlb, fid = records({k: v for k, v in PAPER_LIKE.items() if k != "vdm"})
    with pytest.raises(ValueError, match="baseline at eta = 1"):
        claims(results_frame(nll, vlb, fid))


def test_markdown_has_one_row_per_eta_and_marks_the_best():
    frame = results_frame(*records(PAPER_LIKE))
    text = results_markdown(frame)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(PAPER_LIKE)
    assert lines[2].startswith("| EDM alone | 3.210 ± 0.058 | 101 | 2.0 ± 0.1 | 3.0 ± 0.1 | 3.300 ± 0.014 |")
    assert "| ηmin = 0.0394 |" in text and "**2.600** ± 0.058" in text and "**2.650** ± 0.014" in text
    assert claims_markdown(claims(frame)).count("| yes |") == 7


def test_profile_markdown_shows_both_curves_and_their_crossing():
    gammas = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0]
    ranges = dict(gamma_0=-4.0, gamma_1=2.0)
    rows = [dict(role="quality", expert="edm", gamma=g, loss=0.5 - 0.1 * g, **ranges) for g in gammas[1:]]
    rows += [dict(role="likelihood", expert="vdm", gamma=g, loss=0.45 - 0.2 * g, **ranges) for g in gammas[:-1]]
    text = profile_markdown(pd.DataFrame(rows))
    assert "| γ | -4.0 | -2.0 | 0.0 | 2.0 |" in text
    assert "| EDM | – | 0.700 | 0.500 | 0.300 |" in text and "| VDM | 1.250 | 0.850 | 0.450 | – |" in text
    assert "cross at γ = -0.50 (η = 0.583)" in text  # 0.5 - 0.1 g = 0.45 - 0.2 g at g = -0.5


# 0.1 keeps EDM's FID within 5% (2.08 <= 2.10); 0.3 has a better NLL but a FID just over the limit (2.15)
WITHIN_5_PERCENT = {**PAPER_LIKE, "0.1": (0.1, 2.80, 2.90, 2.08, 3.1)}


def test_recommendation_is_the_best_nll_within_the_fid_budget():
    recommendation = recommended_eta(results_frame(*records(WITHIN_5_PERCENT)), 0.05)
    assert recommendation.row["eta_label"] == "0.1" and recommendation.fid_limit == pytest.approx(2.10)
    assert recommendation.candidates["eta_label"].tolist() == ["eta_min", "0.1"]  # not 0.3 (2.15), nor a baseline
    assert recommendation.candidates["margin"].tolist() == pytest.approx([1.0, 0.2])  # (2.10 - FID) / spread 0.1
    wider = recommended_eta(results_frame(*records(WITHIN_5_PERCENT)), 0.1)  # limit 2.2: 0.3 qualifies
    assert wider.row["eta_label"] == "0.3"
    with pytest.raises(ValueError, match=">= 0"):
        recommended_eta(results_frame(*records(WITHIN_5_PERCENT)), -0.1)


def test_recommendation_markdown_states_the_rule_the_limit_the_candidates_and_the_pick():
    text = recommendation_markdown(recommended_eta(results_frame(*records(WITHIN_5_PERCENT)), 0.05))
    assert "lowest ODE NLL whose ODE FID ≤ 1.05 × EDM's = 2.10" in text
    assert "| ηmin | 3.090 ± 0.058 | 2.00 ± 0.10 | 1.0 |" in text
    assert "| **0.1** (recommended) | 2.800 ± 0.058 | 2.08 ± 0.10 | 0.2 |" in text
    assert "| 0.3 |" not in text and text.endswith("Recommended: η = 0.1, NLL 2.800 bpd, ODE FID 2.08.\n")


def test_no_merge_within_the_budget_gives_no_recommendation():
    worse = {label: (eta, bpd, bound, 3.0, anc) if label not in ("edm", "vdm") else (eta, bpd, bound, fid, anc)
             for label, (eta, bpd, bound, fid, anc) in PAPER_LIKE.items()}
    recommendation = recommended_eta(results_frame(*records(worse)), 0.05)
    assert recommendation.row is None and recommendation.candidates.empty
    assert "No merge has an ODE FID within this limit: no η is recommended." in recommendation_markdown(recommendation)


def test_the_auto_merge_is_a_candidate():
    with_auto = {**WITHIN_5_PERCENT, "auto": (0.25, 2.70, 2.75, 2.05, 3.0)}
    recommendation = recommended_eta(results_frame(*records(with_auto)), 0.05)
    assert recommendation.row["eta_label"] == "auto"
    assert "Recommended: auto (η = 0.25)" in recommendation_markdown(recommendation)
    rows = literature.measured_from_records("cifar10", *records(with_auto), fid_budget=0.05)
    assert "Ours, recommended (auto, η = 0.25, FID within 5% of EDM, CIFAR-10)" in rows["model"].tolist()
    nll, _, fid = records(with_auto)  # the same pick from the ODE records alone (what Fig. 2 and Table 3 use)
    assert recommended_eta(ode_frame(nll, fid), 0.05).row["eta_label"] == "auto"


def test_literature_rows_include_the_recommended_merge():
    rows = literature.measured_from_records("cifar10", *records(WITHIN_5_PERCENT), fid_budget=0.05)
    assert rows["model"].tolist() == ["EDM", "VDM", "Ours, best NLL (η = 0.30, CIFAR-10)",
                                      "Ours, best FID (η = 0.04, CIFAR-10)",
                                      "Ours, recommended (η = 0.10, FID within 5% of EDM, CIFAR-10)"]
    assert rows.iloc[-1][["nll", "fid"]].tolist() == pytest.approx([2.80, 2.08])
    # Recommended and best NLL at once: one row, named as recommended first.
    rows = literature.measured_from_records("cifar10", *records(WITHIN_5_PERCENT), fid_budget=0.1)
    assert rows["model"].tolist() == ["EDM", "VDM", "Ours, recommended, best NLL (η = 0.30, FID within 10% of EDM, "
                                                    "CIFAR-10)", "Ours, best FID (η = 0.04, CIFAR-10)"]
    # No budget, or no merge within it: the paper's rows only.
    assert len(literature.measured_from_records("cifar10", *records(WITHIN_5_PERCENT))) == 4
    nll, vlb, fid = records(WITHIN_5_PERCENT)
    fid.loc[fid["eta_label"] == "edm", "fid"] = 1.0
    assert len(literature.measured_from_records("cifar10", nll, vlb, fid, fid_budget=0.05)) == 4


@pytest.mark.parametrize("auto_vlb, holds", [(2.70, True), (2.70 + 0.013, True), (2.70 + 0.016, False)])
def test_the_auto_merge_is_claimed_no_worse_than_the_best_grid_eta_within_one_run_std(auto_vlb, holds):
    """The best grid eta's VLB is 2.70 with a run std of 0.02 / sqrt(2) = 0.0141."""
    table = claims(results_frame(*records({**PAPER_LIKE, "auto": (0.3, 2.60, auto_vlb, 2.15, 3.2)})))
    row = table[table["claim"].str.startswith("auto (the VLB-optimal merge")]
    assert len(row) == 1 and bool(row["holds"].iloc[0]) == holds, table
    assert len(claims(results_frame(*records(PAPER_LIKE)))) == 7  # no auto row, no auto claim


def heun_records():
    """ODE and Heun FIDs of a baseline and a merge: the merge meets the goal at 17 NFE, the baseline never."""
    rows = [("edm", 0.0, "ode", 10.0, 120), ("edm", 0.0, "heun5", 30.0, 9), ("edm", 0.0, "heun9", 12.0, 17),
            ("edm", 0.0, "heun18", 10.6, 35),
            ("0.5", 0.5, "ode", 20.0, 200), ("0.5", 0.5, "heun5", 25.0, 9), ("0.5", 0.5, "heun9", 20.9, 17),
            ("0.5", 0.5, "heun18", 20.2, 35)]
    return pd.DataFrame([dict(eta_label=label, eta=eta, sampler=sampler, fid=fid, fid_spread=1.0, nfe_mean=nfe)
                         for label, eta, sampler, fid, nfe in rows])


def test_few_step_frame_gives_the_ratios_and_the_goal():
    from expertmerge.summary import few_step_frame, few_step_markdown

    frame = few_step_frame(heun_records()).set_index("eta_label")
    assert frame.loc["edm", "fid_ratio"] == pytest.approx(1.06) and frame.loc["edm", "nfe_ratio"] == pytest.approx(35 / 120)
    assert pd.isna(frame.loc["edm", "fewest_nfe"]) and not frame.loc["edm", "goal"]  # 10.6 > 1.05 x 10
    assert frame.loc["0.5", "fewest_nfe"] == 17 and frame.loc["0.5", "goal"]          # 20.9 <= 21 at 17 <= 50 NFE
    text = few_step_markdown(few_step_frame(heun_records()))
    assert "| EDM | 10.0 (120) | 30.0 (9) | 12.0 (17) | 10.6 (35) | 1.060 | 0.292 | none | no |" in text
    assert "| 0.5 | 20.0 (200) | 25.0 (9) | 20.9 (17) | 20.2 (35) | 1.010 | 0.175 | 17 | yes |" in text
    with pytest.raises(ValueError, match="no FID records of a sampler run at several step counts"):
        few_step_frame(heun_records().query("sampler == 'ode'"))


def test_fid_against_nfe_figure(tmp_path):
    from expertmerge.figures import fid_vs_nfe_figure

    written = fid_vs_nfe_figure(heun_records(), tmp_path / "fid_vs_nfe", etas=["edm", "0.5"])
    assert all(path.stat().st_size > 0 for path in written) and {p.suffix for p in written} == {".png", ".pdf"}
    with pytest.raises(ValueError, match=r"no FID records for eta\(s\) \['0.3'\]"):
        fid_vs_nfe_figure(heun_records(), tmp_path / "x", etas=["edm", "0.3"])
