"""The `expertmerge` commands: each reads its inputs, calls the library, and writes its outputs
atomically. Imports are made inside the commands so that a job loads only what it needs; argument
parsing is in `expertmerge.cli`.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("expertmerge")


class Progress:
    """Log lines with items done, rate and ETA (the job logs are files, so no carriage returns)."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.start = total, what, time.perf_counter()

    def __call__(self, done: int, **extra):
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done) if done else float("nan")
        more = "".join(f", {key} {value}" for key, value in extra.items())
        log.info("%s %d/%d (%.1f%%)%s, elapsed %.0f s, ETA %.0f s", self.what, done, self.total,
                 100 * done / self.total, more, elapsed, eta)


def require_suffix(out, suffix: str) -> None:
    """Refuse an --out that does not end in `suffix`: a figure (.png) gets a .pdf beside it and a table (.csv)
    a .md and a .tex, each named after --out, so any other name would write files nobody asked for."""
    from pathlib import Path

    if Path(out).suffix != suffix:
        beside = {".png": "a .pdf", ".csv": "a .md and a .tex", ".md": "the claims as a .csv"}[suffix]
        raise ValueError(f"--out must end in {suffix} (the command writes {suffix} and {beside} beside it), got {out}")


def solved_batch_sizes(count: int, batch_size: int) -> list[int]:
    """The size of the batch each of `count` items is solved in when the library batches them (consecutive
    batches of `batch_size`, the last one shorter). Records say this, not --batch-size: 359 test images
    asked for in batches of 400 were one batch of 359, and the adaptive solver's NFE are that batch's."""
    from .pipeline import shard_ranges

    return [stop - start for start, stop in shard_ranges(count, batch_size) for _ in range(start, stop)]


def cmd_dataset(args):
    from pathlib import Path

    from .datasets import load_digits_splits, read_image_dataset, save_splits
    from .downloads import verify_file

    files, checksums = dict(args.file), dict(args.checksum)
    if args.source == "sklearn-digits":
        splits = load_digits_splits(seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
        meta = {"seed": args.seed, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    else:
        for role, path in files.items():  # hand-placed files are checked here too
            if role in checksums:
                verify_file(path, checksums[role])
            else:
                log.warning("%s (%s) is read without a checksum: it is not pinned in config.yaml", path, role)
        splits = read_image_dataset(args.source, files)
        meta = {"files": {role: Path(path).name for role, path in files.items()}, "checksums": checksums}
    save_splits(args.out, splits, {"source": args.source, **meta})
    log.info("wrote %s: %s", args.out, {name: len(images) for name, images in splits.items()})


def cmd_fetch(args):
    from .downloads import fetch

    fetch(args.source, args.checksum, args.out, timeout=args.timeout, min_rate=args.min_rate, deadline=args.deadline)


def cmd_import_expert(args):
    from .experts.imports import import_expert

    meta = import_expert(args.input, args.format, args.out, family=args.family, gamma_min=args.gamma_min,
                         gamma_max=args.gamma_max, image_shape=args.image_shape, checksum=args.checksum,
                         network=args.network)
    log.info("imported %s (%s) as a %s expert on gamma [%.4f, %.4f] -> %s", args.input, args.format, meta["network"],
             meta["gamma_min"], meta["gamma_max"], args.out)


def cmd_train_recipe(args):
    import dataclasses
    import os

    from .datasets import split_images
    from .pipeline import check_recipe
    from .recipes import get_recipe
    from .train_recipe import train

    recipe = get_recipe(args.recipe)
    check_recipe(args.recipe, args.family, (args.gamma_min, args.gamma_max))
    if args.until_step is not None and not args.out.endswith(".pt"):
        raise ValueError(f"with --until-step, --out is the training state and must end in .pt, got {args.out!r}")
    if args.resume_from is not None and not os.path.isfile(args.resume_from):
        raise FileNotFoundError(f"--resume-from {args.resume_from}: no such training state")
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:  # one process per GPU, this command in each
        argv = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}", "-m", "expertmerge",
                *args.argv]
        log.info("launching %d processes: %s %s", args.gpus, sys.executable, " ".join(argv))
        os.execv(sys.executable, [sys.executable, *argv])
    if args.network:
        recipe = dataclasses.replace(recipe, network={**recipe.network, **args.network})
    images = split_images(args.data, args.split)
    chunk = args.until_step is not None
    train(recipe, images, args.workdir, max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed,
          checkpoint_every=args.checkpoint_every, log_every=args.log_every, expert_stem=None if chunk else args.out,
          stop_step=args.until_step, resume_from=args.resume_from, state_out=args.out if chunk else None)


def cmd_train_expert(args):
    from .datasets import load_splits
    from .train_expert import train_expert

    splits = load_splits(args.data)
    net = {key: tuple(value) if isinstance(value, list) else value for key, value in args.network.items()}
    train_expert(args.family, splits["train"], splits["val"], steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, ema_decay=args.ema_decay, seed=args.seed, eval_every=args.eval_every,
                 gamma_min=args.gamma_min, gamma_max=args.gamma_max, out_stem=args.out, net=net)


def cmd_train_classifier(args):
    from .datasets import load_splits
    from .features import accuracy, save_classifier, train_classifier

    splits = load_splits(args.data)
    model = train_classifier(splits["train"], splits["train_labels"], splits["val"], splits["val_labels"],
                             seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    test_accuracy = accuracy(model, splits["test"], splits["test_labels"])
    save_classifier(args.out, model, {"test_accuracy": test_accuracy, "steps": args.steps, "seed": args.seed})
    log.info("classifier test accuracy %.4f; wrote %s", test_accuracy, args.out)


def cmd_reference_stats(args):
    from .datasets import split_images

    images = split_images(args.data, args.split)  # before the imports below load torch: bad input fails at once
    from .devices import resolve_device
    from .features import check_feature_input, load_feature_network
    from .frechet import save_statistics, statistics

    check_feature_input(args.features_kind, (images.shape[3], *images.shape[1:3]))  # uint8 images are [N, H, W, C]
    network = load_feature_network(args.features_kind, args.features, resolve_device(args.device),
                                   args.features_checksum)
    mu, sigma = statistics(network(images))
    save_statistics(args.out, mu, sigma, num_images=len(images))
    log.info("reference statistics of %d %s images -> %s", len(images), args.split, args.out)


def cmd_sample(args):
    import numpy as np

    from .devices import resolve_device
    from .features import check_feature_input, load_feature_network
    from .pipeline import build_expert
    from .samplers import get_sampler, given_options, resolve_options
    from .shards import save_sample_shard

    declared = get_sampler(args.sampler)
    options = resolve_options(declared, given_options(args))  # each in its sampler's own range, before any work
    check_trunk_arguments(args, declared.name)
    if args.until_level is None and args.features is None:
        raise ValueError("sample needs --features (the classifier stem or the Inception weights) for the FID "
                         "features it stores, unless it writes a trunk state (--until-level)")
    device = resolve_device(args.device)
    expert, choice, shape = build_expert(args.quality, args.likelihood, args.eta, device, args.switches,
                                        merge=args.merge, extra_stems=dict(args.expert))
    seeds, images, nfe = list(args.seeds), [], []
    if args.until_level is not None:
        return write_trunk_state(args, declared.name, expert, seeds, shape, options, device)
    check_feature_input(args.features_kind, shape)  # before sampling, not after it
    sampler = declared.implementation()
    name = declared.result_name(options)  # Heun's results are per step count: "heun18"
    trunk = start_state(args, declared.name, seeds, options)
    progress = Progress(len(seeds), f"{args.sampler} samples at eta={args.eta}")
    for start in range(0, len(seeds), args.batch_size):  # image i uses seed i (the ODE's step size is per batch)
        if trunk is not None:  # the merge's tail from the sweep's shared trunk
            from .trunks import finish_samples

            record = finish_samples(trunk.rows(start, start + args.batch_size), expert, device)
        else:
            record = sampler(expert, seeds[start:start + args.batch_size], shape, batch_size=args.batch_size,
                             device=device, **options)
        images.append(record.images.cpu().numpy())
        nfe.append(record.nfe.cpu().numpy())
        progress(start + len(record.nfe), nfe=int(record.nfe[0]))
    images, nfe = np.concatenate(images), np.concatenate(nfe)
    feats = load_feature_network(args.features_kind, args.features, device, args.features_checksum)(images)
    batches = {"batch_size": max(solved_batch_sizes(len(seeds), args.batch_size)),  # the largest batch solved
               "batch_limit": args.batch_size}
    save_sample_shard(args.out, images=images, seeds=np.array(seeds), nfe=nfe, features=feats.astype(np.float32),
                      record={**choice.record(), "sampler": name, **options, **batches, **trunk_record(trunk)})
    log.info("wrote %s (mean NFE %.1f)", args.out, nfe.mean())


def check_trunk_arguments(args, path: str) -> None:
    """--until-level/--start-state only for a path that shares a trunk (not Heun's, nor a plugin's sampler)."""
    from .sharing import DIRECTIONS

    if (args.until_level is not None or args.start_state is not None) and path not in DIRECTIONS:
        raise ValueError(f"--until-level/--start-state: the {path} path shares no trunk (shared: {', '.join(DIRECTIONS)})")


def start_state(args, path: str, seeds, options: dict):
    """The trunk state --start-state names, checked to continue this run (None without it)."""
    if args.start_state is None:
        return None
    from .trunks import check_continues, load_trunk_state

    state = load_trunk_state(args.start_state)
    check_continues(state, path, seeds, options, args.start_state)
    return state


def trunk_record(trunk) -> dict:
    """Where a shared result's own run began (the anchor its tail started from), for its record."""
    return {} if trunk is None else {"trunk_level": trunk.level}


def write_trunk_state(args, path: str, expert, seeds, shape, options: dict, device, images=None) -> None:
    """One trunk segment: every image from --start-state (else its path's start) to the anchor --until-level."""
    from .trunks import advance, concat, save_trunk_state, start

    state = start_state(args, path, seeds, options) or start(path, expert, seeds, shape, options, images, device)
    progress, parts = Progress(len(seeds), f"{path} trunk to eta={args.until_level:g}"), []
    for begin in range(0, len(seeds), args.batch_size):
        parts.append(advance(state.rows(begin, begin + args.batch_size), expert, args.until_level, device))
        progress(begin + len(parts[-1].seeds), nfe=int(parts[-1].nfe[0]))
    save_trunk_state(args.out, concat(parts))
    log.info("wrote the %s trunk at eta=%g -> %s", path, args.until_level, args.out)


def cmd_fid(args):
    import numpy as np

    from .frechet import fid_with_spread, load_statistics
    from .shards import load_shard, write_json

    reference = load_statistics(args.reference)
    shards = [load_shard(path, "features", "nfe", "seeds") for path in args.shards]
    for path, shard in zip(args.shards, shards):  # another feature network's: refuse before any statistics
        if shard["features"].shape[1] != len(reference[0]):
            raise ValueError(f"{path} holds {shard['features'].shape[1]}-dimensional features but the reference "
                             f"{args.reference} {len(reference[0])}-dimensional ones: not one feature network")
    order = _seed_order(args.shards, shards)  # the samples in seed order, whatever the order of --shards
    feats = np.concatenate([shard["features"] for shard in shards])[order]
    nfe = np.concatenate([shard["nfe"] for shard in shards])[order]
    scores = fid_with_spread(reference, feats, args.seed_groups)
    record = dict(shards[0]["record"])  # with the ODE's tolerances: an FID means nothing without them
    if "batch_size" in record:  # the largest batch solved in any shard (a short last shard solves a smaller one)
        record["batch_size"] = max(shard["record"].get("batch_size", 0) for shard in shards)
    result = {**record, "fid": scores["fid"], "fid_spread": scores["std"],
              "seed_groups": args.seed_groups, "nfe_mean": float(nfe.mean()), "num_samples": len(feats)}
    write_json(args.out, [result])
    log.info("FID %.3f (spread %.3f over %d seed groups) from %d samples", result["fid"], result["fid_spread"],
             args.seed_groups, len(feats))


def _seed_order(paths, shards):
    """The order that puts the FID shards' samples in seed order. Refuses shards whose records differ (another
    sampler, eta or setting) and seeds that repeat or leave a gap: together they must be seeds 0..N-1."""
    import json

    import numpy as np

    first = shards[0]["record"]
    for path, shard in zip(paths[1:], shards[1:]):
        differ = [key for key in sorted(first.keys() | shard["record"].keys())  # batch_size: what a shard solved
                  if key != "batch_size" and json.dumps(first.get(key)) != json.dumps(shard["record"].get(key))]
        if differ:
            raise ValueError(f"the shards are not of one sampler and eta: {paths[0]} and {path} differ in " + ", ".join(
                f"{key} ({first.get(key)!r} vs {shard['record'].get(key)!r})" for key in differ))
    for path, shard in zip(paths, shards):
        if not len(shard["seeds"]) == len(shard["features"]) == len(shard["nfe"]) > 0:
            raise ValueError(f"{path} holds {len(shard['seeds'])} seeds, {len(shard['features'])} features and "
                             f"{len(shard['nfe'])} NFE counts; a sample shard holds one of each per sample")
    seeds = np.concatenate([shard["seeds"] for shard in shards]).astype(np.int64)
    owner = np.repeat(np.arange(len(shards)), [len(shard["seeds"]) for shard in shards])
    order = np.argsort(seeds, kind="stable")
    repeated = np.unique(seeds[order][1:][np.diff(seeds[order]) == 0])
    if len(repeated):
        files = [paths[k] for k in owner[seeds == repeated[0]]]
        raise ValueError(f"the shards overlap: seed {repeated[0]} is in each of {', '.join(files)} ({len(repeated)} "
                         f"seeds repeat{'; a file is given twice' if len(set(files)) < len(files) else ''}); "
                         f"each seed must be sampled once")
    count = len(seeds)
    if not np.array_equal(seeds[order], np.arange(count)):
        missing = np.setdiff1d(np.arange(count), seeds)
        outside = sorted({paths[k] for k in owner[(seeds < 0) | (seeds >= count)]})
        raise ValueError(f"the shards hold {count} samples, which must be seeds 0..{count - 1}, but {len(missing)} of "
                         f"those are missing (the first {missing[0]}) and {', '.join(outside)} hold(s) seeds outside")
    return order


def _test_shard(args):
    from .datasets import split_images
    from .pipeline import shard_ranges

    images = split_images(args.data, args.split)
    if args.images is not None and args.images > len(images):
        raise ValueError(f"--images {args.images} is more than the {len(images)} images of split {args.split!r}")
    images = images[:args.images]  # the first --images of the split (default all)
    if not 1 <= args.shards <= len(images):
        raise ValueError(f"--shards must be in 1..{len(images)} (each shard needs at least one of the {len(images)} "
                         f"images), got {args.shards}")
    if not 0 <= args.shard < args.shards:
        raise ValueError(f"--shard must be in 0..{args.shards - 1} for --shards {args.shards}, got {args.shard}")
    size = -(-len(images) // args.shards)  # equal shards, the last one shorter
    ranges = shard_ranges(len(images), size)
    if len(ranges) != args.shards:
        raise ValueError(f"{len(images)} images in {args.shards} equal shards of {size} leave the last "
                         f"{args.shards - len(ranges)} empty; choose another --shards")
    start, stop = ranges[args.shard]
    return images[start:stop], range(start, stop)


def cmd_nll(args):
    images, indices = _test_shard(args)  # before the imports below load torch: bad input fails at once
    import pandas as pd

    from .devices import resolve_device
    from .images import check_images
    from .likelihood import check_image_shape, ode_nll
    from .pipeline import build_expert
    from .shards import write_csv

    check_trunk_arguments(args, "nll")
    device = resolve_device(args.device)
    expert, choice, _ = build_expert(args.quality, args.likelihood, args.eta, device, args.switches,
                                        merge=args.merge, extra_stems=dict(args.expert))
    check_image_shape(expert, (images.shape[3], *images.shape[1:3]))  # uint8 images are [N, H, W, C]
    options = {"rtol": args.rtol, "atol": args.atol, "error_norm": args.error_norm,
               "dequantization": args.dequantization}
    if args.until_level is not None:
        shape = (images.shape[3], *images.shape[1:3])
        return write_trunk_state(args, "nll", expert, list(indices), shape, options, device, check_images(images))
    trunk = start_state(args, "nll", list(indices), options)
    progress = Progress(len(indices), f"ODE NLL at eta={args.eta}")
    if trunk is not None:  # the merge's tail from the sweep's shared trunk
        import torch

        from .likelihood import LikelihoodRecord
        from .trunks import finish_nll

        parts = [finish_nll(trunk.rows(b, b + args.batch_size), expert, check_images(images[b:b + args.batch_size]),
                            device) for b in range(0, len(indices), args.batch_size)]
        result = LikelihoodRecord(bpd=torch.cat([p.bpd for p in parts]), nfe=torch.cat([p.nfe for p in parts]))
    else:
        result = ode_nll(expert, images, seeds=list(indices), rtol=args.rtol, atol=args.atol,
                         dequantization=args.dequantization, batch_size=args.batch_size, error_norm=args.error_norm,
                         progress=progress, device=device)
    frame = pd.DataFrame({"image": list(indices), "bpd": result.bpd.numpy(), "nfe": result.nfe.numpy(),
                          "batch_size": solved_batch_sizes(len(indices), args.batch_size), "error_norm": args.error_norm})
    for key, value in {**choice.record(), **trunk_record(trunk)}.items():
        frame[key] = value
    write_csv(args.out, frame)
    log.info("mean %.4f bpd (s.e. %.4f) over %d images", result.mean(), result.standard_error(), len(indices))


def cmd_vlb(args):
    from .datasets import split_images

    images = split_images(args.data, args.split)  # before the imports below load torch: bad input fails at once
    if len(set(args.runs)) < len(args.runs):
        raise ValueError(f"--runs names a run more than once: {args.runs}; a run repeated is the same numbers twice")
    from .devices import resolve_device
    from .likelihood import check_image_shape, vlb
    from .pipeline import build_expert
    from .shards import write_json

    device = resolve_device(args.device)
    expert, choice, _ = build_expert(args.quality, args.likelihood, args.eta, device, args.switches,
                                        merge=args.merge, extra_stems=dict(args.expert))
    check_image_shape(expert, (images.shape[3], *images.shape[1:3]))  # uint8 images are [N, H, W, C]
    records = []
    for run in args.runs:  # one run's numbers depend on its seed only, so grouping runs changes nothing
        result = vlb(expert, images, seed=run, batch_size=args.batch_size, device=device)
        means = {name: float(getattr(result, name).mean()) for name in ("prior", "reconstruction", "diffusion")}
        records.append({**choice.record(), "run": run, "vlb": float(result.bpd.mean()), **means,
                        "num_images": len(images), "batch_size": min(args.batch_size, len(images))})
        log.info("run %d: VLB %.4f bpd (%s)", run, result.bpd.mean(),
                 ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    write_json(args.out, records)
