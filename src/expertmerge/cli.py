"""`expertmerge <command>`: one command per pipeline step, usable by hand (`expertmerge --help`).

Each command reads its inputs, calls the library, and writes its outputs atomically. Imports are
made inside the commands so that a job loads only what it needs.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

log = logging.getLogger("expertmerge")


def seed_range(text: str) -> range:
    """'start:stop' -> range(start, stop)."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like START:STOP, got {text!r}") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"seeds START:STOP need 0 <= START < STOP, got {text!r}")
    return range(start, stop)


def key_value(text: str) -> tuple[str, str]:
    """'key=value' -> (key, value)."""
    key, sep, value = text.partition("=")
    if not (sep and key and value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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


# ---------------------------------------------------------------------------------------------
# Commands.

def cmd_dataset(args):
    from pathlib import Path

    from .datasets import load_digits_splits, save_splits
    from .downloads import verify_file
    from .image_datasets import read_image_dataset

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

    fetch(args.source, args.checksum, args.out, timeout=args.timeout)


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

    from .datasets import load_splits
    from .pipeline import check_recipe
    from .trainer import get_recipe, train

    recipe = get_recipe(args.recipe)
    check_recipe(args.recipe, args.family, (args.gamma_min, args.gamma_max))
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:  # one process per GPU, this command in each
        argv = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}", "-m", "expertmerge",
                *args.argv]
        log.info("launching %d processes: %s %s", args.gpus, sys.executable, " ".join(argv))
        os.execv(sys.executable, [sys.executable, *argv])
    if args.network:
        recipe = dataclasses.replace(recipe, network={**recipe.network, **args.network})
    images = load_splits(args.data)[args.split]
    train(recipe, images, args.workdir, max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed,
          checkpoint_every=args.checkpoint_every, log_every=args.log_every, expert_stem=args.out)


def cmd_train_expert(args):
    from .datasets import load_splits
    from .training import train_expert

    splits = load_splits(args.data)
    net = {} if args.fourier_exponents is None else {"fourier_exponents": tuple(args.fourier_exponents)}
    train_expert(args.family, splits["train"], splits["val"], steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, ema_decay=args.ema_decay, seed=args.seed, eval_every=args.eval_every,
                 gamma_min=args.gamma_min, gamma_max=args.gamma_max, out_stem=args.out, net=net)


def cmd_train_classifier(args):
    from .datasets import load_splits
    from .fid import accuracy, save_classifier, train_classifier

    splits = load_splits(args.data)
    model = train_classifier(splits["train"], splits["train_labels"], splits["val"], splits["val_labels"],
                             seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    test_accuracy = accuracy(model, splits["test"], splits["test_labels"])
    save_classifier(args.out, model, {"test_accuracy": test_accuracy, "steps": args.steps, "seed": args.seed})
    log.info("classifier test accuracy %.4f; wrote %s", test_accuracy, args.out)


def cmd_reference_stats(args):
    from .datasets import load_splits
    from .devices import resolve_device
    from .fid import load_feature_network, save_statistics, statistics

    network = load_feature_network(args.features_kind, args.features, resolve_device(args.device),
                                   args.features_checksum)
    images = load_splits(args.data)[args.split]
    mu, sigma = statistics(network(images))
    save_statistics(args.out, mu, sigma, num_images=len(images))
    log.info("reference statistics of %d %s images -> %s", len(images), args.split, args.out)


def cmd_sample(args):
    import numpy as np

    from .devices import resolve_device
    from .fid import load_feature_network
    from .pipeline import build_expert
    from .sampling import sample_ancestral, sample_heun, sample_ode
    from .shards import save_sample_shard

    device = resolve_device(args.device)
    expert, choice, shape = build_expert(args.quality, args.likelihood, args.eta, device)
    sampler, options = {
        "ode": (sample_ode, {"rtol": args.rtol, "atol": args.atol}),
        "ancestral": (sample_ancestral, {"steps": args.steps}),
        "heun": (sample_heun, {"steps": args.steps}),
    }[args.sampler]
    seeds, images, nfe = list(args.seeds), [], []
    progress = Progress(len(seeds), f"{args.sampler} samples at eta={args.eta}")
    for start in range(0, len(seeds), args.batch_size):  # image i uses seed i: batching changes nothing
        record = sampler(expert, seeds[start:start + args.batch_size], shape, batch_size=args.batch_size,
                         device=device, **options)
        images.append(record.images.cpu().numpy())
        nfe.append(record.nfe.cpu().numpy())
        progress(start + len(record.nfe), nfe=int(record.nfe[0]))
    images, nfe = np.concatenate(images), np.concatenate(nfe)
    feats = load_feature_network(args.features_kind, args.features, device, args.features_checksum)(images)
    save_sample_shard(args.out, images=images, seeds=np.array(seeds), nfe=nfe, features=feats.astype(np.float32),
                      record={**choice.record(), "sampler": args.sampler, **options})
    log.info("wrote %s (mean NFE %.1f)", args.out, nfe.mean())


def cmd_fid(args):
    import numpy as np

    from .fid import fid_with_spread, load_statistics
    from .shards import load_shard, write_json

    shards = [load_shard(path, "features", "nfe") for path in args.shards]
    feats = np.concatenate([shard["features"] for shard in shards])
    nfe = np.concatenate([shard["nfe"] for shard in shards])
    scores = fid_with_spread(load_statistics(args.reference), feats, args.seed_groups)
    record = {key: value for key, value in shards[0]["record"].items() if key not in ("rtol", "atol", "steps")}
    result = {**record, "fid": scores["fid"], "fid_spread": scores["std"],
              "seed_groups": args.seed_groups, "nfe_mean": float(nfe.mean()), "num_samples": len(feats)}
    write_json(args.out, [result])
    log.info("FID %.3f (spread %.3f over %d seed groups) from %d samples", result["fid"], result["fid_spread"],
             args.seed_groups, len(feats))


def _test_shard(args):
    from .datasets import load_splits
    from .pipeline import shard_ranges

    images = load_splits(args.data)[args.split][:args.images]  # the first --images of the split (default all)
    size = -(-len(images) // args.shards)  # equal shards, the last one shorter
    start, stop = shard_ranges(len(images), size)[args.shard]
    return images[start:stop], range(start, stop)


def cmd_nll(args):
    import pandas as pd

    from .devices import resolve_device
    from .likelihood import ode_nll
    from .pipeline import build_expert
    from .shards import write_csv

    device = resolve_device(args.device)
    expert, choice, _ = build_expert(args.quality, args.likelihood, args.eta, device)
    images, indices = _test_shard(args)
    progress = Progress(len(indices), f"ODE NLL at eta={args.eta}")
    result = ode_nll(expert, images, seeds=list(indices), rtol=args.rtol, atol=args.atol,
                     dequantization=args.dequantization, batch_size=args.batch_size, progress=progress, device=device)
    frame = pd.DataFrame({"image": list(indices), "bpd": result.bpd.numpy(), "nfe": result.nfe.numpy()})
    for key, value in choice.record().items():
        frame[key] = value
    write_csv(args.out, frame)
    log.info("mean %.4f bpd (s.e. %.4f) over %d images", result.mean(), result.standard_error(), len(indices))


def cmd_vlb(args):
    from .datasets import load_splits
    from .devices import resolve_device
    from .likelihood import vlb
    from .pipeline import build_expert
    from .shards import write_json

    device = resolve_device(args.device)
    expert, choice, _ = build_expert(args.quality, args.likelihood, args.eta, device)
    images = load_splits(args.data)[args.split]
    result = vlb(expert, images, seed=args.seed, batch_size=args.batch_size, device=device)
    means = {name: float(getattr(result, name).mean()) for name in ("prior", "reconstruction", "diffusion")}
    write_json(args.out, [{**choice.record(), "run": args.seed, "vlb": float(result.bpd.mean()), **means,
                           "num_images": len(images)}])
    log.info("VLB %.4f bpd (%s)", result.bpd.mean(), ", ".join(f"{k} {v:.4f}" for k, v in means.items()))


def cmd_table(args):
    from pathlib import Path

    from . import tables

    records = tables.load_records(*args.inputs)
    if args.table == 1:
        summary = tables.summarize(records, "bpd", by=tables.KEYS + ("gamma_min", "gamma_max"))
        nfe = tables.summarize(records, "nfe", by=tables.KEYS)[["eta_label", "nfe_mean"]]
        table = tables.table1(summary.merge(nfe, on="eta_label"))
    else:
        table = {2: tables.table2, 4: tables.table4}[args.table](records)
    written = tables.write_table(table, Path(args.out).with_suffix(""))
    log.info("wrote %s", ", ".join(map(str, written)))


def cmd_paper_table(args):
    from pathlib import Path

    from . import tables

    records = {name: tables.load_records(*files) for name, *files in args.dataset}
    written = tables.write_table(tables.paper_table(args.table, records), Path(args.out).with_suffix(""))
    log.info("wrote %s", ", ".join(map(str, written)))


def cmd_literature_table(args):
    from pathlib import Path

    import pandas as pd

    from . import literature, tables

    groups = {kind: {dataset: files for dataset, *files in getattr(args, kind)} for kind in ("nll", "vlb", "fid")}
    if not (groups["nll"].keys() == groups["vlb"].keys() == groups["fid"].keys()):
        raise ValueError(f"--nll, --vlb and --fid must name the same data sets; got {[sorted(g) for g in groups.values()]}")
    measured = pd.concat([literature.measured_from_records(dataset, *(tables.load_records(*groups[kind][dataset])
                                                                      for kind in ("nll", "vlb", "fid")))
                          for dataset in groups["nll"]], ignore_index=True)
    table = literature.literature_table(args.table, measured)
    written = tables.write_table(table, Path(args.out).with_suffix(""), caption=literature.literature_caption(args.table))
    log.info("wrote %s", ", ".join(map(str, written)))


def cmd_figure_tradeoff(args):
    from . import figures, tables

    figures.tradeoff_figure(tables.load_records(*args.nll), tables.load_records(*args.vlb),
                            tables.load_records(*args.fid), args.out)


def cmd_figure_grid(args):
    import numpy as np

    from . import figures
    from .shards import load_shard

    shards = [load_shard(path, "images", "seeds") for path in args.shards]
    columns = [shard["record"]["eta_label"] for shard in shards]
    panels = [shard["images"][:args.count] for shard in shards]
    seeds = shards[0]["seeds"][:args.count]
    if any(not np.array_equal(shard["seeds"][:args.count], seeds) for shard in shards):
        raise ValueError("the shards do not start from the same seeds; a grid across eta must share its noise")
    if args.kind == "fixed-noise":
        figures.fixed_noise_grid(panels, columns, args.out, row_labels=[f"seed {seed}" for seed in seeds])
    else:
        figures.sample_grids(panels, columns, args.out, title=args.title)


# ---------------------------------------------------------------------------------------------
# Argument parsing.

def _experts(parser):
    _device(parser)
    parser.add_argument("--quality", required=True, help="quality expert checkpoint stem (.safetensors + .json)")
    parser.add_argument("--likelihood", required=True, help="likelihood expert checkpoint stem")
    parser.add_argument("--eta", required=True, help="switch level: a number, eta_min, eta_max or an expert's name")


def _common(parser, out_help):
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _device(parser):
    parser.add_argument("--device", default="auto", help="auto (a free GPU if any, else cpu), cpu or cuda:N")


def _features(parser):
    parser.add_argument("--features-kind", choices=["digits-classifier", "inception"], default="digits-classifier")
    parser.add_argument("--features", required=True, help="classifier stem, or the Inception weights file")
    parser.add_argument("--features-checksum", default=None, help="sha256:<hex> of the Inception weights, checked first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expertmerge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help_text, out_help):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        _common(sub, out_help)
        return sub

    sub = command("dataset", cmd_dataset, "a data set as train/(val/)test uint8 arrays", "splits .npz")
    sub.add_argument("--source", choices=["sklearn-digits", "cifar10", "imagenet32"], default="sklearn-digits")
    sub.add_argument("--seed", type=int, default=0, help="sklearn-digits: split seed")
    sub.add_argument("--val-fraction", type=float, default=0.1)
    sub.add_argument("--test-fraction", type=float, default=0.2)
    sub.add_argument("--file", type=key_value, action="append", default=[], metavar="ROLE=PATH",
                     help="cifar10: archive=...; imagenet32: train=... and test=...")
    sub.add_argument("--checksum", type=key_value, action="append", default=[], metavar="ROLE=ALG:HEX")

    sub = command("fetch", cmd_fetch, "download or copy a file and verify its checksum", "destination path")
    sub.add_argument("--source", required=True, help="http(s):// or file:// URL, or a local path")
    sub.add_argument("--checksum", required=True, help="sha256:<hex> or md5:<hex>")
    sub.add_argument("--timeout", type=positive_float, default=60.0, help="seconds without data before giving up")

    sub = command("import-expert", cmd_import_expert, "convert an expert made elsewhere into an expert checkpoint",
                  "checkpoint stem")
    sub.add_argument("--input", required=True, help="the file (or, for --format expertmerge, the checkpoint stem)")
    sub.add_argument("--format", choices=["edm-pickle", "vdm-checkpoint", "expertmerge"], required=True)
    sub.add_argument("--family", choices=["edm", "vdm"], required=True)
    sub.add_argument("--gamma-min", type=float, required=True)
    sub.add_argument("--gamma-max", type=float, required=True)
    sub.add_argument("--image-shape", type=int, nargs=3, metavar=("C", "H", "W"))
    sub.add_argument("--checksum", help="sha256:<hex> or md5:<hex> of --input, checked first")
    sub.add_argument("--network", type=json_object, default=None, help="JSON of network hyper-parameters to set")

    sub = command("train-recipe", cmd_train_recipe, "train a paper-scale expert (resumable; --gpus > 1 uses torchrun)",
                  "checkpoint stem")
    sub.add_argument("--recipe", required=True, help="vdm-cifar10, vdm-imagenet32 or edm-imagenet32")
    sub.add_argument("--family", choices=["edm", "vdm"], required=True, help="checked against the recipe")
    sub.add_argument("--gamma-min", type=float, required=True, help="checked against the recipe")
    sub.add_argument("--gamma-max", type=float, required=True)
    sub.add_argument("--data", required=True, help="splits .npz")
    sub.add_argument("--split", default="train")
    sub.add_argument("--workdir", required=True, help="training state for resuming lives here")
    sub.add_argument("--gpus", type=int, default=1)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--checkpoint-every", type=int, default=1000)
    sub.add_argument("--log-every", type=int, default=100)
    sub.add_argument("--max-steps", type=int, default=None, help="default: the recipe's length")
    sub.add_argument("--batch-size", type=int, default=None, help="global batch; default: the recipe's")
    sub.add_argument("--network", type=json_object, default=None, help="JSON overriding network hyper-parameters")

    sub = command("train-expert", cmd_train_expert, "train an expert (EDM loss or VDM ELBO)", "checkpoint stem")
    sub.add_argument("--family", choices=["edm", "vdm"], required=True)
    sub.add_argument("--data", required=True, help="splits .npz from `expertmerge dataset`")
    sub.add_argument("--gamma-min", type=float, required=True)
    sub.add_argument("--gamma-max", type=float, required=True)
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--lr", float), ("--ema-decay", float),
                       ("--eval-every", int), ("--seed", int)):
        sub.add_argument(flag, type=kind, required=True)
    sub.add_argument("--fourier-exponents", type=int, nargs="*", default=None,
                     help="VDM's Fourier input features (none given: no features; flag absent: the default)")

    sub = command("train-classifier", cmd_train_classifier, "train the digit classifier for FID features",
                  "classifier stem")
    sub.add_argument("--data", required=True)
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--lr", float), ("--seed", int)):
        sub.add_argument(flag, type=kind, required=True)

    sub = command("reference-stats", cmd_reference_stats, "FID reference statistics of a split", "statistics .npz")
    sub.add_argument("--data", required=True)
    sub.add_argument("--split", default="train")
    _features(sub)
    _device(sub)

    sub = command("sample", cmd_sample, "generate one shard of samples (and their FID features)", "shard .npz")
    _experts(sub)
    sub.add_argument("--sampler", choices=["ode", "ancestral", "heun"], required=True)
    sub.add_argument("--seeds", type=seed_range, required=True, help="START:STOP; image i uses seed i")
    sub.add_argument("--rtol", type=positive_float, default=1e-5)
    sub.add_argument("--atol", type=positive_float, default=1e-5)
    sub.add_argument("--steps", type=int, default=None, help="ancestral: 256, heun: 18 by default")
    sub.add_argument("--batch-size", type=int, default=500)
    _features(sub)

    sub = command("fid", cmd_fid, "FID of one (sampler, eta) from its shards' features", "result .json")
    sub.add_argument("--reference", required=True)
    sub.add_argument("--shards", nargs="+", required=True)
    sub.add_argument("--seed-groups", type=int, default=5, help="disjoint seed groups for the FID spread")

    for name, handler, text, out in (("nll", cmd_nll, "PF-ODE NLL of one shard of a split", "per-image .csv"),
                                     ("vlb", cmd_vlb, "one run of the variational bound on a split", "result .json")):
        sub = command(name, handler, text, out)
        _experts(sub)
        sub.add_argument("--data", required=True)
        sub.add_argument("--split", default="test")
        sub.add_argument("--batch-size", type=int, default=400)
    sub.add_argument("--seed", type=int, required=True, help="run seed")
    sub = commands.choices["nll"]
    sub.add_argument("--shard", type=int, default=0)
    sub.add_argument("--shards", type=int, default=1)
    sub.add_argument("--images", type=int, default=None, help="use the first this many images of the split")
    sub.add_argument("--rtol", type=positive_float, default=1e-5)
    sub.add_argument("--atol", type=positive_float, default=1e-5)
    sub.add_argument("--dequantization", choices=["tn", "uniform"], default="tn")

    sub = command("table", cmd_table, "assemble Table 1, 2 or 4 (CSV, Markdown, LaTeX)", "table .csv path")
    sub.add_argument("--table", type=int, choices=[1, 2, 4], required=True)
    sub.add_argument("--inputs", nargs="+", required=True)

    sub = command("paper-table", cmd_paper_table, "Table 1, 2 or 4 with the data sets side by side", "table .csv path")
    sub.add_argument("--table", type=int, choices=[1, 2, 4], required=True)
    sub.add_argument("--dataset", nargs="+", action="append", required=True, metavar="NAME FILE",
                     help="a data set's column title, then its result files (repeat per data set, in column order)")

    sub = command("literature-table", cmd_literature_table, "Table 3 or 5: the paper's literature rows and ours",
                  "table .csv path")
    sub.add_argument("--table", type=int, choices=[3, 5], required=True)
    for flag, what in (("--nll", "per-image ODE NLL .csv"), ("--vlb", "per-run VLB .json"), ("--fid", "FID .json")):
        sub.add_argument(flag, nargs="+", action="append", required=True, metavar="DATASET FILE",
                         help=f"cifar10 or imagenet32, then its {what} files (repeat per data set)")

    sub = command("figure-tradeoff", cmd_figure_tradeoff, "Fig. 2: NLL and FID against eta", "figure .png path")
    for flag in ("--nll", "--vlb", "--fid"):
        sub.add_argument(flag, nargs="+", required=True)

    sub = command("figure-grid", cmd_figure_grid, "Fig. 3 (fixed noise) or Figs. 6-7 (samples) per eta",
                  "figure .png path")
    sub.add_argument("--kind", choices=["fixed-noise", "samples"], required=True)
    sub.add_argument("--count", type=int, required=True, help="rows (fixed-noise) or samples per panel")
    sub.add_argument("--shards", nargs="+", required=True, help="shard 0 of each eta, in column order")
    sub.add_argument("--title", default="")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # train-recipe re-launches itself under torchrun with them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "steps", 0) is None:
        args.steps = {"ancestral": 256, "heun": 18}.get(getattr(args, "sampler", ""), None)
    from .downloads import DownloadError

    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, DownloadError) as error:  # bad input: one clear line, no traceback
        log.error("%s: %s", type(error).__name__, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
