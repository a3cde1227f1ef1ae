"""The `expertmerge` commands of the loss-profile diagnostic and of choosing the switch from it: each
expert's L(gamma), the VLB it predicts for every merge (Eq. 6-7), and their figures. Like
`expertmerge.commands`, each reads its inputs, calls the library and writes its outputs atomically.
"""
from __future__ import annotations

from .commands import Progress, log


def cmd_loss_profile(args):
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from .datasets import load_splits
    from .devices import resolve_device
    from .experts.checkpoint import load_expert
    from .loss_profile import diffusion_term_bpd, in_range, loss_profile, profile_grid, profile_records
    from .merge import eta_range, merged_range
    from .seeding import run_seeds
    from .shards import write_csv

    device = resolve_device(args.device)
    stems = {"quality": Path(args.quality), "likelihood": Path(args.likelihood)}
    experts = {role: load_expert(stem, device) for role, stem in stems.items()}
    gamma_0, gamma_1 = merged_range(list(experts.values()))  # one grid over the union of both ranges
    eta_min, eta_max = eta_range(experts["quality"], experts["likelihood"])
    ends = [end for expert in experts.values() for end in (expert.gamma_min, expert.gamma_max)]
    grid = np.union1d(profile_grid(gamma_0, gamma_1, args.points), ends)  # each range's ends, for its integral
    images = load_splits(args.data)[args.split]
    seeds = run_seeds(args.seed, range(len(images)))  # the same noise for both experts at each gamma
    records = []
    for role, expert in experts.items():
        inside = in_range(expert, grid)
        loss = loss_profile(expert, images, grid, seeds=seeds, evaluate=inside, batch_size=args.batch_size,
                            device=device, progress=Progress(len(images), f"L(gamma) of the {role} expert"))
        ranges = {"gamma_min": expert.gamma_min, "gamma_max": expert.gamma_max, "eta_min": eta_min,
                  "eta_max": eta_max, "gamma_0": gamma_0, "gamma_1": gamma_1}
        records += [{"role": role, "expert": stems[role].name, **record, **ranges}
                    for record in profile_records(grid, loss)]
        mean = loss[:, inside].mean(0).numpy()
        log.info("%s expert %s: %d of %d grid points in its range; 1/(2 ln 2) int L dgamma over them %.4f bpd",
                 role, stems[role].name, inside.sum(), len(grid), diffusion_term_bpd(grid[inside], mean))
    write_csv(args.out, pd.DataFrame(records))


def cmd_predict_vlb(args):
    import pandas as pd

    from .datasets import load_splits
    from .loss_profile import predicted_vlb, profile_curves
    from .noise import linear_gamma
    from .pipeline import resolve_eta
    from .shards import write_csv

    profile = pd.read_csv(args.profile)
    gammas, curves = profile_curves(profile)
    names = dict(zip(profile["role"], profile["expert"]))
    eta_min, eta_max, gamma_0, gamma_1 = (float(profile[key].iloc[0]) for key in ("eta_min", "eta_max", "gamma_0", "gamma_1"))
    images = load_splits(args.data)[args.split]
    records = []
    for label in args.etas:
        choice = resolve_eta(label, names, eta_min, eta_max)
        if choice.baseline:  # an expert alone, on its own range
            lo, hi, curve = curves[choice.baseline]
            pieces = [(lo, hi, curve)]
        else:  # the likelihood expert below gamma_eta, the quality expert above (Eq. 14)
            switch = linear_gamma(choice.eta, gamma_0, gamma_1)
            pieces = [(gamma_0, switch, curves["likelihood"][2]), (switch, gamma_1, curves["quality"][2])]
        terms = predicted_vlb(images, gammas, pieces)
        records.append({**choice.record(), "gamma_min": pieces[0][0], "gamma_max": pieces[-1][1],
                        **{f"predicted_{key}": value for key, value in terms.items()}})
        log.info("eta %s: predicted VLB %.4f bpd", label, terms["vlb"])
    write_csv(args.out, pd.DataFrame(records))


def cmd_figure_predicted_vlb(args):
    from . import figures, tables

    figures.predicted_vlb_figure(tables.load_records(*args.vlb), tables.load_records(args.predicted), args.out)


def cmd_figure_loss_profile(args):
    import pandas as pd

    from . import figures

    figures.loss_profile_figure(pd.read_csv(args.profile), args.out, etas=args.etas, title=args.title)
