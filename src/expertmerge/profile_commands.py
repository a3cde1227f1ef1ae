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
    from .profile_files import ROLES
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
    names = {"quality": stems["quality"].name, "likelihood": stems["likelihood"].name}
    for name, stem in args.expert:  # experts beyond the pair, keyed by their names
        if name in stems or name in names.values():
            raise ValueError(f"--expert {name}={stem}: the name {name!r} is taken (experts: {', '.join(names.values())})")
        stems[name], names[name] = Path(stem), name
    experts = {key: load_expert(stem, device) for key, stem in stems.items()}
    for key, expert in experts.items():  # all before any runs; uint8 images are [N, H, W, C]
        whose = f"the {key} expert {names[key]}" if key in ROLES else f"the expert {names[key]}"
        check_image_shape(expert, (images.shape[3], *images.shape[1:3]), whose)
    gamma_0, gamma_1 = merged_range([experts["quality"], experts["likelihood"]])  # the pair's clock (Eq. 14)
    eta_min, eta_max = eta_range(experts["quality"], experts["likelihood"])
    ends = [end for expert in experts.values() for end in (expert.gamma_min, expert.gamma_max)]
    grid = np.union1d(profile_grid(*merged_range(list(experts.values())), args.points), ends)  # over every range
    part = np.array_split(np.arange(len(indices)), args.shards)[args.shard]  # equal shards of the selection
    images, indices = images[part], indices[part]
    seeds = run_seeds(args.seed, indices)  # image j's noise depends on j only; both experts see the same noise
    losses = {}
    for key, expert in experts.items():
        inside = in_range(expert, grid)
        losses[key] = loss_profile(expert, images, grid, seeds=seeds, evaluate=inside, batch_size=args.batch_size,
                                   device=device, progress=Progress(len(images), f"L(gamma) of {names[key]}"))
        log.info("expert %s (%s): %d of %d grid points in its range; 1/(2 ln 2) int L dgamma over them %.4f bpd",
                 names[key], _role(key), inside.sum(), len(grid),
                 diffusion_term_bpd(grid[inside], losses[key][:, inside].mean(0).numpy()))
    paired = (losses["quality"].numpy(), losses["likelihood"].numpy())
    records = []
    for key, expert in experts.items():
        ranges = {"gamma_min": expert.gamma_min, "gamma_max": expert.gamma_max, "eta_min": eta_min,
                  "eta_max": eta_max, "gamma_0": gamma_0, "gamma_1": gamma_1,
                  "shard": args.shard, "shards": args.shards}  # combine-profiles refuses a shard given twice
        records += [{"role": _role(key), "expert": names[key], **record, **ranges}
                    for record in profile_records(grid, losses[key], paired if key in ROLES else None)]
    write_csv(args.out, pd.DataFrame(records))


def _role(key: str) -> str:
    from .profile_files import OTHER_ROLE, ROLES

    return key if key in ROLES else OTHER_ROLE


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


def cmd_auto_merge(args):
    from .loss_profile import profile_curves
    from .profile_files import expert_ranges, read_loss_profile
    from .shards import write_json
    from .switch_selection import merge_of_pieces, switch_etas, vlb_optimal_merge

    profile = read_loss_profile(args.profile)
    ranges = expert_ranges(profile)
    unknown = [name for name in args.experts if name not in ranges]
    if unknown or len(set(args.experts)) != len(args.experts):
        raise ValueError(f"--experts must name distinct experts of the profile ({', '.join(ranges)}), got {args.experts}")
    gammas, curves = profile_curves(profile, by="expert")
    _, errors = profile_curves(profile, by="expert", column="standard_error")
    chosen, pointwise, candidates, clock = vlb_optimal_merge(
        gammas, {name: curves[name][2] for name in args.experts}, {name: errors[name][2] for name in args.experts},
        {name: ranges[name] for name in args.experts})
    describe = lambda c: {"experts": list(c.experts), "switch_etas": switch_etas(c.switches, *clock),  # noqa: E731
                          "switch_gammas": list(c.switches), "excess_bpd": c.excess_bpd,
                          "standard_error_bpd": c.standard_error_bpd}
    write_json(args.out, {"merge": merge_of_pieces(chosen, clock), **describe(chosen), "candidates_of": args.experts,
                          "gamma_0": clock[0], "gamma_1": clock[1], "images": int(profile["images"].max()),
                          "pointwise": describe(pointwise), "candidates": [describe(c) for c in candidates]})
    log.info("auto over %s: %s (low to high noise) switching at eta %s; the pointwise optimum has %d pieces, %.4f bpd "
             "below (standard error <= %.4f)", ", ".join(args.experts), " | ".join(chosen.experts),
             ", ".join(f"{eta:.4f}" for eta in switch_etas(chosen.switches, *clock)) or "(none)",
             len(pointwise.experts), chosen.excess_bpd, chosen.standard_error_bpd)


def cmd_predict_vlb(args):
    import pandas as pd

    from .loss_profile import predicted_vlb, profile_curves
    from .noise import linear_gamma
    from .pipeline import AUTO_LABEL, load_switches, resolve_eta
    from .profile_files import expert_ranges, profile_experts, read_loss_profile
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
    for name, merge in _named_merges(args, expert_ranges(profile)):
        choice, pieces = _merge_pieces(name, merge, profile)
        terms = predicted_vlb(images, gammas, pieces)
        records.append({**choice.record(), "gamma_min": pieces[0][0], "gamma_max": pieces[-1][1],
                        **{f"predicted_{key}": value for key, value in terms.items()}})
        log.info("merge %s: predicted VLB %.4f bpd", name, terms["vlb"])
    write_csv(args.out, pd.DataFrame(records))


def _named_merges(args, ranges: dict) -> list[tuple[str, dict]]:
    """The named merges to predict: --merges NAME=JSON (config.yaml's form, hard switches only: a blend's
    denoiser mixes two experts' predictions, whose loss no curve holds) and --auto-merges NAME=FILE."""
    from argparse import ArgumentTypeError

    from .arguments import json_object
    from .merge_plan import check_config_merge
    from .profile_files import read_auto_merge

    merges = []
    for name, text in args.merges:
        try:
            merge = json_object(text)
            check_config_merge(merge, ranges)
        except (ArgumentTypeError, ValueError, KeyError) as error:
            raise ValueError(f"--merges {name}: {error}") from None
        if any(isinstance(value, dict) for value in merge["switches"]):
            raise ValueError(f"--merges {name}: a blend's VLB is not predicted by the experts' L(gamma) (its "
                             "denoiser mixes two experts' predictions); give hard switches only")
        merges.append((name, merge))
    return merges + [(name, read_auto_merge(path, ranges)) for name, path in args.auto_merges]


def _merge_pieces(name: str, merge: dict, profile):
    """(EtaChoice, pieces low to high noise with each expert's curve) of a hard-switch merge on its own clock."""
    import math

    from .loss_profile import profile_curves
    from .noise import linear_gamma
    from .pipeline import EtaChoice

    gammas, curves = profile_curves(profile, by="expert")
    names = [str(expert) for expert in merge["experts"]][::-1]  # low to high noise
    clock = (min(curves[n][0] for n in names), max(curves[n][1] for n in names))
    etas = sorted(float(eta) for eta in merge["switches"])
    edges = [clock[0], *(linear_gamma(eta, *clock) for eta in etas), clock[1]]
    choice = EtaChoice(name, etas[0] if etas else None, None, math.nan, switch_etas=tuple(etas))
    return choice, [(lo, hi, curves[n][2]) for lo, hi, n in zip(edges[:-1], edges[1:], names)]


def cmd_figure_predicted_vlb(args):
    require_suffix(args.out, ".png")
    from . import figures, tables

    figures.predicted_vlb_figure(tables.load_records(*args.vlb), tables.load_records(args.predicted), args.out)


def cmd_figure_loss_profile(args):
    require_suffix(args.out, ".png")
    from . import figures
    from .pipeline import load_switches
    import json
    from pathlib import Path

    from .profile_files import expert_ranges, profile_experts, read_auto_merge, read_loss_profile

    profile = read_loss_profile(args.profile)
    auto = load_switches(args.switches, *profile_experts(profile))[1] if args.switches else ()
    ranges = expert_ranges(profile)
    merges = {}
    for name, path in args.merges:
        read_auto_merge(path, ranges)  # checked, then drawn from its pieces
        merges[name] = json.loads(Path(path).read_text())
    figures.loss_profile_figure(profile, args.out, etas=args.etas, auto=auto, merges=merges, title=args.title)
