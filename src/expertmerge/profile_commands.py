"""The `expertmerge` commands of the loss-profile diagnostic and of choosing the switch from it: each
expert's L(gamma), the VLB it predicts for every merge (Eq. 6-7), and their figures. Like
`expertmerge.commands`, each reads its inputs, calls the library and writes its outputs atomically.
"""
from __future__ import annotations

from .commands import Progress, log, require_suffix


def _selected_images(args):
    """The profile's images: --images of the split (all by default), chosen by --seed; and their indices."""
    from .datasets import split_images
    from .loss_profile import selection_images

    images = split_images(args.data, args.split)
    indices = selection_images(len(images), args.images, args.seed)
    return images[indices], indices


def cmd_loss_profile(args):
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from .devices import resolve_device
    from .experts.checkpoint import load_expert
    from .likelihood import check_image_shape
    from .loss_profile import diffusion_term_bpd, in_range, loss_profile, profile_grid, profile_records
    from .merge import eta_range, merged_range
    from .seeding import run_seeds
    from .shards import write_csv

    if not 0 <= args.shard < args.shards:
        raise ValueError(f"--shard must be in 0..{args.shards - 1} for --shards {args.shards}, got {args.shard}")
    images, indices = _selected_images(args)
    if args.shards > len(indices):
        raise ValueError(f"--shards must be in 1..{len(indices)} (each shard needs at least one of the {len(indices)} "
                         f"selected images), got {args.shards}")
    device = resolve_device(args.device)
    stems = {"quality": Path(args.quality), "likelihood": Path(args.likelihood)}
    experts = {role: load_expert(stem, device) for role, stem in stems.items()}
    for role, expert in experts.items():  # both before either runs; uint8 images are [N, H, W, C]
        check_image_shape(expert, (images.shape[3], *images.shape[1:3]), f"the {role} expert {stems[role].name}")
    gamma_0, gamma_1 = merged_range(list(experts.values()))  # one grid over the union of both ranges
    eta_min, eta_max = eta_range(experts["quality"], experts["likelihood"])
    ends = [end for expert in experts.values() for end in (expert.gamma_min, expert.gamma_max)]
    grid = np.union1d(profile_grid(gamma_0, gamma_1, args.points), ends)  # each range's ends, for its integral
    part = np.array_split(np.arange(len(indices)), args.shards)[args.shard]  # equal shards of the selection
    images, indices = images[part], indices[part]
    seeds = run_seeds(args.seed, indices)  # image j's noise depends on j only; both experts see the same noise
    losses = {}
    for role, expert in experts.items():
        inside = in_range(expert, grid)
        losses[role] = loss_profile(expert, images, grid, seeds=seeds, evaluate=inside, batch_size=args.batch_size,
                                    device=device, progress=Progress(len(images), f"L(gamma) of the {role} expert"))
        log.info("%s expert %s: %d of %d grid points in its range; 1/(2 ln 2) int L dgamma over them %.4f bpd",
                 role, stems[role].name, inside.sum(), len(grid),
                 diffusion_term_bpd(grid[inside], losses[role][:, inside].mean(0).numpy()))
    paired = (losses["quality"].numpy(), losses["likelihood"].numpy())
    records = []
    for role, expert in experts.items():
        ranges = {"gamma_min": expert.gamma_min, "gamma_max": expert.gamma_max, "eta_min": eta_min,
                  "eta_max": eta_max, "gamma_0": gamma_0, "gamma_1": gamma_1,
                  "shard": args.shard, "shards": args.shards}  # combine-profiles refuses a shard given twice
        records += [{"role": role, "expert": stems[role].name, **record, **ranges}
                    for record in profile_records(grid, losses[role], paired)]
    write_csv(args.out, pd.DataFrame(records))


def cmd_combine_profiles(args):
    from .loss_profile import combine_profiles
    from .profile_files import read_loss_profile
    from .shards import write_csv

    combined = combine_profiles([read_loss_profile(path, whole=False) for path in args.inputs], args.inputs)
    write_csv(args.out, combined)
    log.info("combined %d shards: %d images per gamma", len(args.inputs), combined["images"].max())


def cmd_auto_switch(args):
    from .loss_profile import difference_curves, profile_curves
    from .noise import linear_gamma
    from .profile_files import read_loss_profile
    from .shards import write_json
    from .switch_selection import switch_etas, vlb_optimal_switches

    profile = read_loss_profile(args.profile)
    gammas, curves = profile_curves(profile)
    _, _, difference_error = difference_curves(profile)
    eta_min, eta_max, gamma_0, gamma_1 = (float(profile[key].iloc[0]) for key in ("eta_min", "eta_max", "gamma_0", "gamma_1"))
    selection = vlb_optimal_switches(gammas, curves["likelihood"][2], curves["quality"][2], difference_error,
                                     linear_gamma(eta_min, gamma_0, gamma_1), linear_gamma(eta_max, gamma_0, gamma_1))
    describe = lambda c: {"switch_etas": switch_etas(c.switches, gamma_0, gamma_1), "switch_gammas": list(c.switches),  # noqa: E731
                          "excess_bpd": c.excess_bpd, "standard_error_bpd": c.standard_error_bpd}
    names = dict(zip(profile["role"], profile["expert"]))
    write_json(args.out, {**describe(selection.chosen), "experts": selection.experts(), "names": names,
                          "gamma_0": gamma_0, "gamma_1": gamma_1, "images": int(profile["images"].max()),
                          "pointwise": describe(selection.pointwise),
                          "candidates": [describe(c) for c in selection.candidates]})
    log.info("auto: %d switch(es) at eta %s (the pointwise optimum has %d; %.4f bpd above it, standard error <= %.4f)",
             len(selection.chosen.switches), ", ".join(f"{eta:.4f}" for eta in switch_etas(selection.chosen.switches,
                                                                                          gamma_0, gamma_1)),
             len(selection.pointwise.switches), selection.chosen.excess_bpd, selection.chosen.standard_error_bpd)


def cmd_predict_vlb(args):
    import pandas as pd

    from .loss_profile import predicted_vlb, profile_curves
    from .noise import linear_gamma
    from .pipeline import AUTO_LABEL, load_switches, resolve_eta
    from .profile_files import profile_experts, read_loss_profile
    from .shards import write_csv

    if len(set(args.etas)) < len(args.etas):
        raise ValueError(f"--etas names an eta more than once: {args.etas}; each is predicted once")
    profile = read_loss_profile(args.profile)
    gammas, curves = profile_curves(profile)
    names, ranges = profile_experts(profile)
    eta_min, eta_max, gamma_0, gamma_1 = (float(profile[key].iloc[0]) for key in ("eta_min", "eta_max", "gamma_0", "gamma_1"))
    images, _ = _selected_images(args)
    records = []
    for label in args.etas:
        roles, etas = (load_switches(args.switches, names, ranges) if label == AUTO_LABEL and args.switches
                       else (["likelihood", "quality"], None))
        choice = resolve_eta(label, names, eta_min, eta_max, etas)
        if choice.baseline:  # an expert alone, on its own range
            lo, hi, curve = curves[choice.baseline]
            pieces = [(lo, hi, curve)]
        else:  # the likelihood expert below gamma_eta, the quality expert above (Eq. 14); auto: as chosen
            edges = [gamma_0, *(linear_gamma(eta, gamma_0, gamma_1) for eta in (etas or [choice.eta])), gamma_1]
            pieces = [(lo, hi, curves[role][2]) for lo, hi, role in zip(edges[:-1], edges[1:], roles)]
        terms = predicted_vlb(images, gammas, pieces)
        records.append({**choice.record(), "gamma_min": pieces[0][0], "gamma_max": pieces[-1][1],
                        **{f"predicted_{key}": value for key, value in terms.items()}})
        log.info("eta %s: predicted VLB %.4f bpd", label, terms["vlb"])
    write_csv(args.out, pd.DataFrame(records))


def cmd_figure_predicted_vlb(args):
    require_suffix(args.out, ".png")
    from . import figures, tables

    figures.predicted_vlb_figure(tables.load_records(*args.vlb), tables.load_records(args.predicted), args.out)


def cmd_figure_loss_profile(args):
    require_suffix(args.out, ".png")
    from . import figures
    from .pipeline import load_switches
    from .profile_files import profile_experts, read_loss_profile

    profile = read_loss_profile(args.profile)
    auto = load_switches(args.switches, *profile_experts(profile))[1] if args.switches else ()
    figures.loss_profile_figure(profile, args.out, etas=args.etas, auto=auto, title=args.title)
