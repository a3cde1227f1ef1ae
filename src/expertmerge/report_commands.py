"""The `expertmerge` commands that assemble results: Tables 1-5, the figures and the summary. They read
result records (CSV/JSON) and sample shards, never a network. Like `expertmerge.commands`, each writes
its outputs atomically.
"""
from __future__ import annotations

from .commands import log, require_suffix


def cmd_table(args):
    """One experiment's Table <number>, from the result files of the kinds its declaration reads."""
    require_suffix(args.out, ".csv")
    from pathlib import Path

    from . import tables
    from .records import read_records_by_kind
    from .table_registry import RECORD_COLUMN, get_table

    declared = get_table(args.table)
    if not declared.per_experiment:
        raise ValueError(f"Table {declared.number} is the paper target's alone: `expertmerge literature-table`")
    if args.predicted and "predicted" not in declared.optional:
        raise ValueError(f"--predicted adds the predicted VLB to a table that reads it (Table 4); Table "
                         f"{declared.number} does not")
    groups = read_records_by_kind(*args.inputs)
    given = {kind: groups.pop(RECORD_COLUMN[kind], None) for kind in declared.reads}
    if groups or any(records is None for records in given.values()):
        raise ValueError(f"Table {declared.number} is built from {' and '.join(declared.reads)} records: give "
                         f"--inputs of {'those kinds' if len(declared.reads) > 1 else 'that kind'} only")
    optional = {"predicted": tables.load_records(args.predicted)} if args.predicted else {}
    table = declared.builder()(*(tables.check_records(records, ()) for records in given.values()), **optional)
    written = tables.write_table(table, Path(args.out).with_suffix(""))
    log.info("wrote %s", ", ".join(map(str, written)))


def cmd_paper_table(args):
    require_suffix(args.out, ".csv")
    from pathlib import Path

    from . import tables
    from .table_registry import get_table

    records = {name: tables.load_records(*files) for name, *files in args.dataset}
    table = get_table(args.table).paper_builder()(records)
    written = tables.write_table(table, Path(args.out).with_suffix(""))
    log.info("wrote %s", ", ".join(map(str, written)))


def cmd_literature_table(args):
    require_suffix(args.out, ".csv")
    from pathlib import Path

    import pandas as pd

    from . import literature, summary, tables
    from .table_registry import get_table

    groups = {kind: {dataset: files for dataset, *files in getattr(args, kind)} for kind in ("nll", "vlb", "fid")}
    if not (groups["nll"].keys() == groups["vlb"].keys() == groups["fid"].keys()):
        raise ValueError(f"--nll, --vlb and --fid must name the same data sets; got {[sorted(g) for g in groups.values()]}")
    budgets = dict.fromkeys(groups["nll"], summary.RECOMMEND_FID_BUDGET)  # --recommend-fid-budget overrides
    for dataset, budget in args.recommend_fid_budget:
        if dataset not in budgets:
            raise ValueError(f"--recommend-fid-budget names {dataset!r}, which has no --nll/--vlb/--fid files")
        budgets[dataset] = float(budget)
    measured = pd.concat([literature.measured_from_records(dataset, *(tables.load_records(*groups[kind][dataset])
                                                                      for kind in ("nll", "vlb", "fid")),
                                                           fid_budget=budgets[dataset])
                          for dataset in groups["nll"]], ignore_index=True)
    table = get_table(args.table).paper_builder()(args.table, measured)
    written = tables.write_table(table, Path(args.out).with_suffix(""), caption=literature.literature_caption(args.table))
    log.info("wrote %s", ", ".join(map(str, written)))


def cmd_figure_tradeoff(args):
    require_suffix(args.out, ".png")
    from . import figures, tables

    figures.tradeoff_figure(tables.load_records(*args.nll), tables.load_records(*args.vlb),
                            tables.load_records(*args.fid), args.out, fid_budget=args.recommend_fid_budget)


def cmd_summary(args):
    from pathlib import Path

    require_suffix(args.out, ".md")

    from . import summary, tables
    from .files import write_text
    from .profile_files import read_loss_profile
    from .samplers import stepped_sampler

    nll, vlb, fid = (tables.load_records(*paths) for paths in (args.nll, args.vlb, args.fid))
    profile = read_loss_profile(args.profile) if args.profile else None  # every input checked before any work
    predicted = tables.load_records(args.predicted) if args.predicted else None
    frame = summary.results_frame(nll, vlb, fid)
    claims = summary.claims(frame, args.fid_budget)
    recommendation = summary.recommended_eta(frame, args.recommend_fid_budget)
    text = ("Results per switch level (NLL ± s.e. over test images, FID ± seed-group spread, VLB ± std over runs)"
            "\n\n" + summary.results_markdown(frame, dict(args.named)) + "\nThe paper's claims\n\n" + summary.claims_markdown(claims)
            + "\nRecommended η\n\n" + summary.recommendation_markdown(recommendation))
    if fid["sampler"].map(stepped_sampler).notna().any():
        text += ("\nFew-step sampling: EDM's Heun sampler against the adaptive ODE (FID, NFE per image; the goal: "
                 "within 5% of the ODE's FID at ≤ ¼ of its NFE)\n\n" + summary.few_step_markdown(summary.few_step_frame(fid)))
    if all(f"vlb_{term}" in frame.columns for term in summary.VLB_TERMS):
        text += "\nThe VLB by term (Eq. 6; bits/dim, mean over runs)\n\n" + summary.vlb_terms_markdown(frame)
    if profile is not None:
        text += ("\nDenoising loss per dimension L(γ) on the selection images (the VLB integrand, Eq. 7)\n\n"
                 + summary.profile_markdown(profile))
    if predicted is not None:
        text += ("\nThe VLB predicted from the experts' L(γ) on the selection images (Eq. 6–7, no further network "
                 "evaluation) beside the one measured on the test images\n\n"
                 + summary.predicted_markdown(frame, predicted))
    out = Path(args.out)
    write_text(out.with_suffix(".csv"), claims.to_csv(index=False))
    write_text(out, text)
    for row in claims.itertuples():
        log.info("%s: %s (%s)", "holds" if row.holds else "DOES NOT HOLD", row.claim, row.measured)
    pick = recommendation.row
    log.info("recommended: %s", "none (no merge within the FID limit)" if pick is None
             else summary.eta_name(pick["eta_label"], pick["eta"]))


def cmd_figure_grid(args):
    require_suffix(args.out, ".png")
    import numpy as np

    from . import figures
    from .shards import load_shard

    shards = [load_shard(path, "images", "seeds") for path in args.shards]
    fewest = min(range(len(shards)), key=lambda k: len(shards[k]["images"]))
    if args.count > len(shards[fewest]["images"]):
        raise ValueError(f"--count {args.count} is more than the shards hold: {args.shards[fewest]} has "
                         f"{len(shards[fewest]['images'])} samples")
    columns = [shard["record"]["eta_label"] for shard in shards]
    for k, label in enumerate(columns):
        if label in columns[:k]:
            raise ValueError(f"{args.shards[columns.index(label)]} and {args.shards[k]} are both samples at eta {label}; "
                             "a grid has one column per eta")
    panels = [shard["images"][:args.count] for shard in shards]
    seeds = shards[0]["seeds"][:args.count]
    if any(not np.array_equal(shard["seeds"][:args.count], seeds) for shard in shards):
        raise ValueError("the shards do not start from the same seeds; a grid across eta must share its noise")
    if args.kind == "fixed-noise":
        figures.fixed_noise_grid(panels, columns, args.out, row_labels=[f"seed {seed}" for seed in seeds])
    else:
        figures.sample_grids(panels, columns, args.out, title=args.title)


def cmd_figure_fid_vs_nfe(args):
    require_suffix(args.out, ".png")
    from . import figures, tables

    figures.fid_vs_nfe_figure(tables.load_records(*args.fid), args.out, etas=args.etas, title=args.title)
