"""`expertmerge <command>`: one command per pipeline step, usable by hand (`expertmerge --help`).

This module parses arguments; the commands themselves are in `expertmerge.commands`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import commands, profile_commands, report_commands
from .experts.registry import family_names, import_formats

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


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# ---------------------------------------------------------------------------------------------
# Argument parsing.

def _expert_pair(parser):
    _device(parser)
    parser.add_argument("--quality", required=True, help="quality expert checkpoint stem (.safetensors + .json)")
    parser.add_argument("--likelihood", required=True, help="likelihood expert checkpoint stem")


def _experts(parser):
    _expert_pair(parser)
    parser.add_argument("--eta", required=True,
                        help="switch level: a number, eta_min, eta_max, an expert's name, or auto (needs --switches)")
    parser.add_argument("--switches", default=None, help="eta auto: the auto-switch .json chosen from the loss profile")


def _selection(parser, whose=""):
    """The images a loss profile is measured on: a split, or a fixed seeded choice of its images."""
    parser.add_argument("--split", default="val", help=f"{whose}split (never the test split for choosing eta)")
    parser.add_argument("--images", type=positive_int, default=None, help=f"{whose}number of images of the split, chosen by "
                        "--seed (default: all)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="selection and noise seed (image j draws from (seed, j))")


def _common(parser, out_help):
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")


def _device(parser):
    parser.add_argument("--device", default="auto", help="auto (a free GPU if any, else cpu), cpu or cuda:N")


def _features(parser):
    parser.add_argument("--features-kind", choices=["digits-classifier", "inception"], default="digits-classifier")
    parser.add_argument("--features", required=True, help="classifier stem, or the Inception weights file")
    parser.add_argument("--features-checksum", default=None, help="sha256:<hex> of the Inception weights, checked first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expertmerge", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help_text, out_help):
        sub = subcommands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        _common(sub, out_help)
        return sub

    sub = command("dataset", commands.cmd_dataset, "a data set as train/(val/)test uint8 arrays", "splits .npz")
    sub.add_argument("--source", choices=["sklearn-digits", "cifar10", "imagenet32"], default="sklearn-digits")
    sub.add_argument("--seed", type=non_negative_int, default=0, help="sklearn-digits: split seed")
    sub.add_argument("--val-fraction", type=float, default=0.1)
    sub.add_argument("--test-fraction", type=float, default=0.2)
    sub.add_argument("--file", type=key_value, action="append", default=[], metavar="ROLE=PATH",
                     help="cifar10: archive=...; imagenet32: train=... and test=...")
    sub.add_argument("--checksum", type=key_value, action="append", default=[], metavar="ROLE=ALG:HEX")

    sub = command("fetch", commands.cmd_fetch, "download or copy a file and verify its checksum", "destination path")
    sub.add_argument("--source", required=True, help="http(s):// or file:// URL, or a local path")
    sub.add_argument("--checksum", required=True, help="sha256:<hex> or md5:<hex>")
    sub.add_argument("--timeout", type=positive_float, default=60.0, help="seconds without data before giving up")

    sub = command("import-expert", commands.cmd_import_expert, "convert an expert made elsewhere into an expert checkpoint",
                  "checkpoint stem")
    sub.add_argument("--input", required=True, help="the file (or, for --format expertmerge, the checkpoint stem)")
    sub.add_argument("--format", choices=import_formats(), required=True)
    sub.add_argument("--family", choices=family_names(), required=True)
    sub.add_argument("--gamma-min", type=float, required=True)
    sub.add_argument("--gamma-max", type=float, required=True)
    sub.add_argument("--image-shape", type=positive_int, nargs=3, metavar=("C", "H", "W"))
    sub.add_argument("--checksum", help="sha256:<hex> or md5:<hex> of --input, checked first")
    sub.add_argument("--network", type=json_object, default=None, help="JSON of network hyper-parameters to set")

    sub = command("train-recipe", commands.cmd_train_recipe, "train a paper-scale expert (resumable; --gpus > 1 uses torchrun)",
                  "checkpoint stem; with --until-step, the training state .pt")
    sub.add_argument("--recipe", required=True, help="vdm-cifar10, vdm-imagenet32 or edm-imagenet32")
    sub.add_argument("--family", choices=family_names(), required=True, help="checked against the recipe")
    sub.add_argument("--gamma-min", type=float, required=True, help="checked against the recipe")
    sub.add_argument("--gamma-max", type=float, required=True)
    sub.add_argument("--data", required=True, help="splits .npz")
    sub.add_argument("--split", default="train")
    sub.add_argument("--workdir", required=True, help="training state for resuming lives here")
    sub.add_argument("--gpus", type=positive_int, default=1)
    sub.add_argument("--seed", type=non_negative_int, default=0)
    sub.add_argument("--checkpoint-every", type=positive_int, default=1000)
    sub.add_argument("--log-every", type=positive_int, default=100)
    sub.add_argument("--max-steps", type=positive_int, default=None, help="default: the recipe's length")
    sub.add_argument("--batch-size", type=positive_int, default=None, help="global batch; default: the recipe's")
    sub.add_argument("--network", type=json_object, default=None, help="JSON overriding network hyper-parameters")
    sub.add_argument("--until-step", type=positive_int, default=None,
                     help="one job of a training chain: stop after this step and write the training state to --out "
                          "(a .pt file) instead of the expert")
    sub.add_argument("--resume-from", default=None, help="the previous job's training state (--until-step's --out)")

    sub = command("train-expert", commands.cmd_train_expert, "train a small expert with its family's loss (the demo's)", "checkpoint stem")
    sub.add_argument("--family", choices=family_names(), required=True)
    sub.add_argument("--data", required=True, help="splits .npz from `expertmerge dataset`")
    sub.add_argument("--gamma-min", type=float, required=True)
    sub.add_argument("--gamma-max", type=float, required=True)
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--lr", float), ("--ema-decay", float),
                       ("--eval-every", int), ("--seed", int)):
        sub.add_argument(flag, type=kind, required=True)
    sub.add_argument("--network", type=json_object, default={},
                     help="JSON of SmallUNet hyper-parameters to set (patch, channels, fourier_exponents, ...)")

    sub = command("train-classifier", commands.cmd_train_classifier, "train the digit classifier for FID features",
                  "classifier stem")
    sub.add_argument("--data", required=True)
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--lr", float), ("--seed", int)):
        sub.add_argument(flag, type=kind, required=True)

    sub = command("reference-stats", commands.cmd_reference_stats, "FID reference statistics of a split", "statistics .npz")
    sub.add_argument("--data", required=True)
    sub.add_argument("--split", default="train")
    _features(sub)
    _device(sub)

    sub = command("sample", commands.cmd_sample, "generate one shard of samples (and their FID features)", "shard .npz")
    _experts(sub)
    sub.add_argument("--sampler", choices=["ode", "ancestral", "heun"], required=True)
    sub.add_argument("--seeds", type=seed_range, required=True, help="START:STOP; image i uses seed i")
    sub.add_argument("--rtol", type=positive_float, default=1e-5)
    sub.add_argument("--atol", type=positive_float, default=1e-5)
    sub.add_argument("--steps", type=positive_int, default=None, help="ancestral: 256, heun: 18 by default")
    sub.add_argument("--error-norm", choices=["batch-rms", "image-max"], default="batch-rms",
                     help="ode: how a batch's solver error is measured (batch-rms: score_sde's, the paper's NFE)")
    sub.add_argument("--clip-denoised", action="store_true", help="ancestral: clip D to [-1, 1] (VDM's clip_samples)")
    sub.add_argument("--schedule", choices=["inserted", "split"], default="split",
                     help="heun: a merge's switch added to EDM's levels (inserted), or taking one level's place (split)")
    sub.add_argument("--batch-size", type=positive_int, default=500)
    _features(sub)

    sub = command("fid", commands.cmd_fid, "FID of one (sampler, eta) from its shards' features", "result .json")
    sub.add_argument("--reference", required=True)
    sub.add_argument("--shards", nargs="+", required=True)
    sub.add_argument("--seed-groups", type=positive_int, default=5, help="disjoint seed groups for the FID spread")

    for name, handler, text, out in (("nll", commands.cmd_nll, "PF-ODE NLL of one shard of a split", "per-image .csv"),
                                     ("vlb", commands.cmd_vlb, "runs of the variational bound on a split",
                                      "per-run .json")):
        sub = command(name, handler, text, out)
        _experts(sub)
        sub.add_argument("--data", required=True)
        sub.add_argument("--split", default="test")
        sub.add_argument("--batch-size", type=positive_int, default=400)
    sub.add_argument("--runs", type=positive_int, nargs="+", required=True, metavar="RUN",
                     help="run seeds; each run is one record, the same as when run alone")
    sub = subcommands.choices["nll"]
    sub.add_argument("--shard", type=non_negative_int, default=0)
    sub.add_argument("--shards", type=positive_int, default=1)
    sub.add_argument("--images", type=positive_int, default=None, help="use the first this many images of the split")
    sub.add_argument("--rtol", type=positive_float, default=1e-5)
    sub.add_argument("--atol", type=positive_float, default=1e-5)
    sub.add_argument("--dequantization", choices=["tn", "uniform"], default="tn")
    sub.add_argument("--error-norm", choices=["batch-rms", "image-max"], default="batch-rms",
                     help="how a batch's solver error is measured (batch-rms: score_sde's, the paper's NFE)")

    sub = command("loss-profile", profile_commands.cmd_loss_profile, "each expert's denoising loss L(gamma) on one gamma grid",
                  "profile .csv")
    _expert_pair(sub)
    sub.add_argument("--data", required=True, help="splits .npz")
    _selection(sub)
    sub.add_argument("--points", type=positive_int, required=True, help="grid points over the union of both gamma ranges")
    sub.add_argument("--batch-size", type=positive_int, default=256, help="images per network call")
    sub.add_argument("--shard", type=non_negative_int, default=0, help="this job's part of the images (0-based)")
    sub.add_argument("--shards", type=positive_int, default=1, help="equal parts of the images (combine-profiles joins them)")

    sub = command("combine-profiles", profile_commands.cmd_combine_profiles,
                  "one loss profile from its shards (means and standard errors pooled exactly)", "profile .csv")
    sub.add_argument("--inputs", nargs="+", required=True, help="the loss-profile shard .csv files")

    sub = command("auto-switch", profile_commands.cmd_auto_switch,
                  "the VLB-optimal switches (eta auto) from the experts' L(gamma), smoothed to the fewest that "
                  "lose at most one standard error", "switches .json")
    sub.add_argument("--profile", required=True, help="loss-profile .csv")

    sub = command("predict-vlb", profile_commands.cmd_predict_vlb,
                  "each eta's VLB predicted from the experts' L(gamma) (Eq. 6-7), with no network evaluation",
                  "predicted .csv")
    sub.add_argument("--profile", required=True, help="loss-profile .csv (its grid holds both experts' range ends)")
    sub.add_argument("--data", required=True, help="splits .npz: the prior and reconstruction terms")
    _selection(sub, "the profile's ")
    sub.add_argument("--etas", nargs="+", required=True, help="eta labels, as config.yaml's etas")
    sub.add_argument("--switches", default=None, help="eta auto: the auto-switch .json")

    sub = command("table", report_commands.cmd_table, "assemble Table 1, 2 or 4 (CSV, Markdown, LaTeX)", "table .csv path")
    sub.add_argument("--table", type=int, choices=[1, 2, 4], required=True)
    sub.add_argument("--inputs", nargs="+", required=True)
    sub.add_argument("--predicted", default=None, help="Table 4: a predict-vlb .csv, shown beside the measured VLB")

    sub = command("paper-table", report_commands.cmd_paper_table, "Table 1, 2 or 4 with the data sets side by side", "table .csv path")
    sub.add_argument("--table", type=int, choices=[1, 2, 4], required=True)
    sub.add_argument("--dataset", nargs="+", action="append", required=True, metavar="NAME FILE",
                     help="a data set's column title, then its result files (repeat per data set, in column order)")

    sub = command("literature-table", report_commands.cmd_literature_table, "Table 3 or 5: the paper's literature rows and ours",
                  "table .csv path")
    sub.add_argument("--table", type=int, choices=[3, 5], required=True)
    for flag, what in (("--nll", "per-image ODE NLL .csv"), ("--vlb", "per-run VLB .json"), ("--fid", "FID .json")):
        sub.add_argument(flag, nargs="+", action="append", required=True, metavar="DATASET FILE",
                         help=f"cifar10 or imagenet32, then its {what} files (repeat per data set)")
    sub.add_argument("--recommend-fid-budget", type=key_value, nargs="+", default=[], metavar="DATASET=DELTA",
                     help="per data set: add the merge with the best ODE NLL whose ODE FID <= (1 + DELTA) x the "
                          "quality expert's (default DELTA 0.05)")

    sub = command("figure-tradeoff", report_commands.cmd_figure_tradeoff, "Fig. 2: NLL and FID against eta", "figure .png path")
    for flag in ("--nll", "--vlb", "--fid"):
        sub.add_argument(flag, nargs="+", required=True)
    sub.add_argument("--recommend-fid-budget", type=float, default=0.05, metavar="DELTA",
                     help="mark the ODE FID limit (1 + DELTA) x the quality expert's and the merge with the best "
                          "ODE NLL within it")

    sub = command("figure-fid-vs-nfe", report_commands.cmd_figure_fid_vs_nfe,
                  "FID against NFE: Heun at each step count, the adaptive ODE as a marker, per eta", "figure .png path")
    sub.add_argument("--fid", nargs="+", required=True, help="FID .json files of every sampler")
    sub.add_argument("--etas", nargs="+", required=True, help="the eta labels to draw")
    sub.add_argument("--title", default=None)

    sub = command("figure-predicted-vlb", profile_commands.cmd_figure_predicted_vlb,
                  "the VLB predicted from L(gamma) against the measured VLB, per eta", "figure .png path")
    sub.add_argument("--vlb", nargs="+", required=True, help="per-run VLB .json files")
    sub.add_argument("--predicted", required=True, help="a predict-vlb .csv")

    sub = command("summary", report_commands.cmd_summary, "every eta's NLL, FID and VLB, and the paper's claims checked",
                  "summary .md path (the claims also as .csv beside it)")
    for flag in ("--nll", "--vlb", "--fid"):
        sub.add_argument(flag, nargs="+", required=True)
    sub.add_argument("--profile", default=None, help="a loss-profile CSV: adds L(gamma) of both experts")
    sub.add_argument("--predicted", default=None, help="a predict-vlb CSV: adds the predicted VLB per eta")
    sub.add_argument("--fid-budget", type=float, default=0.1,
                     help="a merge keeps the quality expert's FID if its ODE FID <= (1 + budget) x the expert's")
    sub.add_argument("--recommend-fid-budget", type=float, default=0.05, metavar="DELTA",
                     help="recommend the merge with the best ODE NLL whose ODE FID <= (1 + DELTA) x the quality "
                          "expert's (separate from --fid-budget, the paper's claim)")

    sub = command("figure-grid", report_commands.cmd_figure_grid, "Fig. 3 (fixed noise) or Figs. 6-7 (samples) per eta",
                  "figure .png path")
    sub.add_argument("--kind", choices=["fixed-noise", "samples"], required=True)
    sub.add_argument("--count", type=positive_int, required=True, help="rows (fixed-noise) or samples per panel")
    sub.add_argument("--shards", nargs="+", required=True, help="shard 0 of each eta, in column order")
    sub.add_argument("--title", default="")

    sub = command("figure-loss-profile", profile_commands.cmd_figure_loss_profile, "L(gamma) of both experts, etas marked",
                  "figure .png path")
    sub.add_argument("--profile", required=True, help="loss-profile .csv")
    sub.add_argument("--etas", type=float, nargs="*", default=[], help="switch levels to mark")
    sub.add_argument("--switches", default=None, help="an auto-switch .json: its switches are marked")
    sub.add_argument("--title", default=None)
    return parser


def check_writable(out) -> None:
    """Fail before any work if --out's folder cannot be made or written (a read-only or missing mount)."""
    import tempfile
    from pathlib import Path

    folder = Path(out).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise OSError(f"cannot write the output {out}: {error.strerror or error} in {folder}") from None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # train-recipe re-launches itself under torchrun with them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        check_writable(args.out)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if getattr(args, "steps", 0) is None:
            args.steps = {"ancestral": 256, "heun": 18}.get(getattr(args, "sampler", ""), None)
        args.handler(args)
    except Exception as error:  # bad input, a full disk, a refused file: one line, no traceback (--debug: both)
        if args.debug:
            raise
        from pickle import UnpicklingError

        from .downloads import DownloadError

        expected = isinstance(error, (ValueError, OSError, DownloadError, UnpicklingError))  # the message says it all
        message = " ".join(str(error).split()) or repr(error)
        log.error("%s: %s%s", type(error).__name__, message, "" if expected else " (run with --debug for the traceback)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
