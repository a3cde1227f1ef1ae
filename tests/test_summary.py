"""The results-at-a-glance table and the paper's claims checked on measured records."""
import pandas as pd
import pytest

from expertmerge.summary import claims, claims_markdown, profile_markdown, results_frame, results_markdown

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
