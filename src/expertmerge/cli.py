"""`expertmerge <command>`: one command per pipeline step, usable by hand (`expertmerge --help`).

This module parses arguments; the commands themselves are in `expertmerge.commands`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import commands, limits, profile_commands, report_commands
from .arguments import (batch, bounded_float, bounded_int, budget_pair, decay, fraction, images, in_range, json_object, key_value, seed,
                        seed_range, shard, shards, steps, threads, unit)
from .experts.registry import family_names, import_formats
from .files import check_output_path
from .plugins import load_plugins
from .samplers import SAMPLERS, sampler_names
from .table_registry import experiment_tables, get_table, paper_numbers

log = logging.getLogger("expertmerge")


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
    parser.add_argument("--switches", default=None, help="eta auto: the auto-switch .json chosen from the loss profile; "
                        "a named auto merge: its auto-merge .json")
    parser.add_argument("--merge", type=json_object, default=None,
                        help='a named merge (--eta is its name): JSON {"experts": [high noise to low], "switches": '
                             '[eta or {"blend": [eta_a, eta_b]}, ...]}')
    parser.add_argument("--expert", type=key_value, nargs="+", action="extend", default=[], metavar="NAME=STEM",
                        help="a named merge's expert beyond --quality and --likelihood: its checkpoint stem")


def _selection(parser, whose=""):
    """The images a loss profile is measured on: a split, or a fixed seeded choice of its images."""
    parser.add_argument("--split", default="val", help=f"{whose}split (never the test split for choosing eta)")
    parser.add_argument("--images", type=images, default=None, help=f"{whose}number of images of the split, chosen by "
                        "--seed (default: all)")
    parser.add_argument("--seed", type=seed, default=0, help="selection and noise seed (image j draws from (seed, j))")


def _common(parser, out_help):
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--threads", type=threads, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")


def _device(parser):
    parser.add_argument("--device", default="auto", help="auto (a free GPU if any, else cpu), cpu or cuda:N")


def _sampler_options(parser):
    """One flag per sampler option (`expertmerge.samplers`); a flag two samplers share takes the union of their
    ranges here, and each sampler's own range when the command runs (`samplers.resolve_options`)."""
    declared = {}
    for sampler in SAMPLERS.values():
        for option in sampler.options:
            declared.setdefault(option.name, []).append((sampler, option))
    for name, users in declared.items():
        option = users[0][1]
        help_text = "; ".join(f"{sampler.name}: {option.help} (default {option.default})" for sampler, option in users)
        if option.schema.get("type") == "boolean":
            parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        schemas = [option.schema for _, option in users]
        if "enum" in option.schema:
            choices = list(dict.fromkeys(value for schema in schemas for value in schema["enum"]))
            parser.add_argument(option.flag, choices=choices, default=None, help=help_text)
            continue
        low, high = min(schema["minimum"] for schema in schemas), max(schema["maximum"] for schema in schemas)
        kind = bounded_int(low, high) if option.schema["type"] == "integer" else bounded_float(low, high)
        parser.add_argument(option.flag, type=kind, default=None, help=help_text)


def _trunk(parser):
    """A sweep's shared trunk (expertmerge.trunks): write one segment of it, or run a merge's tail from it."""
    parser.add_argument("--until-level", type=bounded_float(0, 1), default=None, metavar="ETA",
                        help="write the trunk state at this anchor on the merged clock to --out (an .npz) instead of "
                             "results: one trunk segment, run by the expert --eta's merge uses there")
    parser.add_argument("--start-state", default=None, metavar="NPZ",
                        help="start from this trunk state (an --until-level output) instead of the prior or the data")


def _titles(numbers) -> str:
    return "; ".join(f"Table {number}, {get_table(number).title}" for number in numbers)


def _features(parser):
    parser.add_argument("--features-kind", choices=["digits-classifier", "inception"], default="digits-classifier")
    parser.add_argument("--features", default=None, help="classifier stem, or the Inception weights file (required, "
                                                         "except for a trunk segment)")
    parser.add_argument("--features-checksum", default=None, help="sha256:<hex> of the Inception weights, checked first")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a refused argument is one line (the usage block would bury it); --help shows the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="expertmerge", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help_text, out_help):
        sub = subcommands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        _common(sub, out_help)
        return sub

    for group in (_data_commands, _expert_commands, _measurement_commands, _profile_commands, _report_commands):
        group(command)
    return parser


def _data_commands(command):
    """Getting data: data sets and downloads."""
    sub = command("dataset", commands.cmd_dataset, "a data set as train/(val/)test uint8 arrays", "splits .npz")
    sub.add_argument("--source", choices=["sklearn-digits", "cifar10", "imagenet32"], default="sklearn-digits")
    sub.add_argument("--seed", type=seed, default=0, help="sklearn-digits: split seed")
    sub.add_argument("--val-fraction", type=fraction, default=0.1, help="in (0, 1)")
    sub.add_argument("--test-fraction", type=fraction, default=0.2, help="in (0, 1)")
    sub.add_argument("--file", type=key_value, action="append", default=[], metavar="ROLE=PATH",
                     help="cifar10: archive=...; imagenet32: train=... and test=...")
    sub.add_argument("--checksum", type=key_value, action="append", default=[], metavar="ROLE=ALG:HEX")

    sub = command("fetch", commands.cmd_fetch, "download or copy a file and verify its checksum", "destination path")
    sub.add_argument("--source", required=True, help="http(s):// or file:// URL, or a local path")
    sub.add_argument("--checksum", required=True, help="sha256:<hex> or md5:<hex>")
    sub.add_argument("--timeout", type=in_range(limits.TIMEOUT), default=60.0, help="seconds without data before giving up")
    sub.add_argument("--min-rate", type=in_range(limits.DOWNLOAD_RATE), default=1000.0, metavar="BYTES_PER_S",
                     help="give up when the average rate after the first 30 s is below this (0: never)")
    sub.add_argument("--deadline", type=in_range(limits.DOWNLOAD_DEADLINE), default=None, metavar="SECONDS",
                     help="give up when the download is not complete after this long (default: no deadline)")


def _expert_commands(command):
    """Making experts: importing, training (demo and paper-scale), the FID classifier."""
    sub = command("import-expert", commands.cmd_import_expert, "convert an expert made elsewhere into an expert checkpoint",
                  "checkpoint stem")
    sub.add_argument("--input", required=True, help="the file (or, for --format expertmerge, the checkpoint stem)")
    sub.add_argument("--format", choices=import_formats(), required=True)
    sub.add_argument("--family", choices=family_names(), required=True)
    sub.add_argument("--gamma-min", type=in_range(limits.GAMMA), required=True)
    sub.add_argument("--gamma-max", type=in_range(limits.GAMMA), required=True)
    sub.add_argument("--image-shape", type=bounded_int(1, limits.MAX_IMAGE_SIDE), nargs=3, metavar=("C", "H", "W"))
    sub.add_argument("--checksum", help="sha256:<hex> or md5:<hex> of --input, checked first")
    sub.add_argument("--network", type=json_object, default=None, help="JSON of network hyper-parameters to set")

    sub = command("train-recipe", commands.cmd_train_recipe, "train a paper-scale expert (resumable; --gpus > 1 uses torchrun)",
                  "checkpoint stem; with --until-step, the training state .pt")
    sub.add_argument("--recipe", required=True, help="vdm-cifar10, vdm-imagenet32 or edm-imagenet32")
    sub.add_argument("--family", choices=family_names(), required=True, help="checked against the recipe")
    sub.add_argument("--gamma-min", type=in_range(limits.GAMMA), required=True, help="checked against the recipe")
    sub.add_argument("--gamma-max", type=in_range(limits.GAMMA), required=True)
    sub.add_argument("--data", required=True, help="splits .npz")
    sub.add_argument("--split", default="train")
    sub.add_argument("--workdir", required=True, help="training state for resuming lives here")
    sub.add_argument("--gpus", type=bounded_int(1, limits.MAX_GPUS), default=1)
    sub.add_argument("--seed", type=seed, default=0)
    sub.add_argument("--checkpoint-every", type=steps, default=1000)
    sub.add_argument("--log-every", type=steps, default=100)
    sub.add_argument("--max-steps", type=steps, default=None, help="default: the recipe's length")
    sub.add_argument("--batch-size", type=batch, default=None, help="global batch; default: the recipe's")
    sub.add_argument("--network", type=json_object, default=None, help="JSON overriding network hyper-parameters")
    sub.add_argument("--until-step", type=steps, default=None,
                     help="one job of a training chain: stop after this step and write the training state to --out "
                          "(a .pt file) instead of the expert")
    sub.add_argument("--resume-from", default=None, help="the previous job's training state (--until-step's --out)")

    sub = command("train-expert", commands.cmd_train_expert, "train a small expert with its family's loss (the demo's)", "checkpoint stem")
    sub.add_argument("--family", choices=family_names(), required=True)
    sub.add_argument("--data", required=True, help="splits .npz from `expertmerge dataset`")
    sub.add_argument("--gamma-min", type=in_range(limits.GAMMA), required=True)
    sub.add_argument("--gamma-max", type=in_range(limits.GAMMA), required=True)
    for flag, kind in (("--steps", steps), ("--batch-size", batch), ("--lr", in_range(limits.LEARNING_RATE)),
                       ("--ema-decay", decay), ("--eval-every", steps), ("--seed", seed)):
        sub.add_argument(flag, type=kind, required=True)
    sub.add_argument("--network", type=json_object, default={},
                     help="JSON of SmallUNet hyper-parameters to set (patch, channels, fourier_exponents, ...)")

    sub = command("train-classifier", commands.cmd_train_classifier, "train the digit classifier for FID features",
                  "classifier stem")
    sub.add_argument("--data", required=True)
    for flag, kind in (("--steps", steps), ("--batch-size", batch), ("--lr", in_range(limits.LEARNING_RATE)),
                       ("--seed", seed)):
        sub.add_argument(flag, type=kind, required=True)


def _measurement_commands(command):
    """Measuring: reference statistics, samples and their FID, the ODE NLL and the VLB."""
    sub = command("reference-stats", commands.cmd_reference_stats, "FID reference statistics of a split", "statistics .npz")
    sub.add_argument("--data", required=True)
    sub.add_argument("--split", default="train")
    _features(sub)
    _device(sub)

    sub = command("sample", commands.cmd_sample, "generate one shard of samples (and their FID features)", "shard .npz")
    _experts(sub)
    sub.add_argument("--sampler", choices=sampler_names(), required=True, help="a sampler of expertmerge.samplers")
    sub.add_argument("--seeds", type=seed_range, required=True, help="START:STOP; image i uses seed i")
    _sampler_options(sub)
    sub.add_argument("--batch-size", type=batch, default=500)
    _features(sub)
    _trunk(sub)

    sub = command("fid", commands.cmd_fid, "FID of one (sampler, eta) from its shards' features", "result .json")
    sub.add_argument("--reference", required=True)
    sub.add_argument("--shards", nargs="+", required=True)
    sub.add_argument("--seed-groups", type=bounded_int(2, limits.MAX_SHARDS), default=5, help="disjoint seed groups for the FID spread")

    measure = {}
    for name, handler, text, out in (("nll", commands.cmd_nll, "PF-ODE NLL of one shard of a split", "per-image .csv"),
                                     ("vlb", commands.cmd_vlb, "runs of the variational bound on a split",
                                      "per-run .json")):
        sub = measure[name] = command(name, handler, text, out)
        _experts(sub)
        sub.add_argument("--data", required=True)
        sub.add_argument("--split", default="test")
        sub.add_argument("--batch-size", type=batch, default=400)
    sub.add_argument("--runs", type=seed, nargs="+", required=True, metavar="RUN",
                     help="run seeds; each run is one record, the same as when run alone")
    sub = measure["nll"]
    sub.add_argument("--shard", type=shard, default=0)
    sub.add_argument("--shards", type=shards, default=1)
    sub.add_argument("--images", type=images, default=None, help="use the first this many images of the split")
    sub.add_argument("--rtol", type=in_range(limits.TOLERANCE), default=1e-5)
    sub.add_argument("--atol", type=in_range(limits.TOLERANCE), default=1e-5)
    sub.add_argument("--dequantization", choices=["tn", "uniform"], default="tn")
    sub.add_argument("--error-norm", choices=["batch-rms", "image-max"], default="batch-rms",
                     help="how a batch's solver error is measured (batch-rms: score_sde's, the paper's NFE)")
    _trunk(sub)


def _profile_commands(command):
    """The per-noise-level view: loss profiles, the switches they choose and the VLB they predict."""
    sub = command("loss-profile", profile_commands.cmd_loss_profile, "each expert's denoising loss L(gamma) on one gamma grid",
                  "profile .csv")
    _expert_pair(sub)
    sub.add_argument("--expert", type=key_value, nargs="+", action="extend", default=[], metavar="NAME=STEM",
                     help="an expert beyond the pair (role 'other' in the profile, for named merges): its checkpoint stem")
    sub.add_argument("--data", required=True, help="splits .npz")
    _selection(sub)
    sub.add_argument("--points", type=bounded_int(2, limits.MAX_POINTS), required=True,
                     help="grid points over the union of all the experts' gamma ranges")
    sub.add_argument("--batch-size", type=batch, default=256, help="images per network call")
    sub.add_argument("--shard", type=shard, default=0, help="this job's part of the images (0-based)")
    sub.add_argument("--shards", type=shards, default=1, help="equal parts of the images (combine-profiles joins them)")

    sub = command("combine-profiles", profile_commands.cmd_combine_profiles,
                  "one loss profile from its shards (means and standard errors pooled exactly)", "profile .csv")
    sub.add_argument("--inputs", nargs="+", required=True, help="the loss-profile shard .csv files")

    sub = command("auto-switch", profile_commands.cmd_auto_switch,
                  "the VLB-optimal switches (eta auto) from the experts' L(gamma), smoothed to the fewest that "
                  "lose at most one standard error", "switches .json")
    sub.add_argument("--profile", required=True, help="loss-profile .csv")

    sub = command("auto-merge", profile_commands.cmd_auto_merge,
                  "the VLB-optimal merge of any number of the profile's experts: at each gamma the lowest L(gamma), "
                  "smoothed to the fewest pieces within one standard error", "auto-merge .json")
    sub.add_argument("--profile", required=True, help="loss-profile .csv holding every expert named")
    sub.add_argument("--experts", nargs="+", required=True, help="the experts (names in the profile) that may serve")

    sub = command("predict-vlb", profile_commands.cmd_predict_vlb,
                  "each eta's VLB predicted from the experts' L(gamma) (Eq. 6-7), with no network evaluation",
                  "predicted .csv")
    sub.add_argument("--profile", required=True, help="loss-profile .csv (its grid holds both experts' range ends)")
    sub.add_argument("--data", required=True, help="splits .npz: the prior and reconstruction terms")
    _selection(sub, "the profile's ")
    sub.add_argument("--etas", nargs="+", required=True, help="eta labels, as config.yaml's etas")
    sub.add_argument("--switches", default=None, help="eta auto: the auto-switch .json")
    sub.add_argument("--merges", type=key_value, nargs="+", action="extend", default=[], metavar="NAME=JSON",
                     help="a named merge with hard switches (config.yaml's form, as JSON) to predict")
    sub.add_argument("--auto-merges", type=key_value, nargs="+", action="extend", default=[], metavar="NAME=FILE",
                     help="a named auto merge's .json (expertmerge auto-merge) to predict")

    sub = command("figure-predicted-vlb", profile_commands.cmd_figure_predicted_vlb,
                  "the VLB predicted from L(gamma) against the measured VLB, per eta", "figure .png path")
    sub.add_argument("--vlb", nargs="+", required=True, help="per-run VLB .json files")
    sub.add_argument("--predicted", required=True, help="a predict-vlb .csv")

    sub = command("figure-loss-profile", profile_commands.cmd_figure_loss_profile, "L(gamma) of both experts, etas marked",
                  "figure .png path")
    sub.add_argument("--profile", required=True, help="loss-profile .csv")
    sub.add_argument("--etas", type=unit, nargs="*", default=[], help="switch levels to mark, each in [0, 1]")
    sub.add_argument("--switches", default=None, help="an auto-switch .json: its switches are marked")
    sub.add_argument("--merges", type=key_value, nargs="+", action="extend", default=[], metavar="NAME=JSON",
                     help="an auto merge's .json (expertmerge auto-merge): its pieces drawn as a strip")
    sub.add_argument("--title", default=None)


def _report_commands(command):
    """Assembling results: tables, figures and the summary."""
    sub = command("table", report_commands.cmd_table, "assemble one experiment's table (CSV, Markdown, LaTeX): "
                  + _titles(table.number for table in experiment_tables()), "table .csv path")
    sub.add_argument("--table", type=int, choices=[table.number for table in experiment_tables()], required=True)
    sub.add_argument("--inputs", nargs="+", required=True, help="the result files of the kinds the table reads")
    sub.add_argument("--predicted", default=None, help="Table 4: a predict-vlb .csv, shown beside the measured VLB")

    sub = command("paper-table", report_commands.cmd_paper_table, "a table with the data sets side by side: "
                  + _titles(paper_numbers(literature=False)), "table .csv path")
    sub.add_argument("--table", type=int, choices=paper_numbers(literature=False), required=True)
    sub.add_argument("--dataset", nargs="+", action="append", required=True, metavar="NAME FILE",
                     help="a data set's column title, then its result files (repeat per data set, in column order)")

    sub = command("literature-table", report_commands.cmd_literature_table, "the paper's literature rows and ours: "
                  + _titles(paper_numbers(literature=True)), "table .csv path")
    sub.add_argument("--table", type=int, choices=paper_numbers(literature=True), required=True)
    for flag, what in (("--nll", "per-image ODE NLL .csv"), ("--vlb", "per-run VLB .json"), ("--fid", "FID .json")):
        sub.add_argument(flag, nargs="+", action="append", required=True, metavar="DATASET FILE",
                         help=f"cifar10 or imagenet32, then its {what} files (repeat per data set)")
    sub.add_argument("--recommend-fid-budget", type=budget_pair, nargs="+", default=[], metavar="DATASET=DELTA",
                     help="per data set: add the merge with the best ODE NLL whose ODE FID <= (1 + DELTA) x the "
                          "quality expert's (default DELTA 0.05)")

    sub = command("figure-tradeoff", report_commands.cmd_figure_tradeoff, "Fig. 2: NLL and FID against eta", "figure .png path")
    for flag in ("--nll", "--vlb", "--fid"):
        sub.add_argument(flag, nargs="+", required=True)
    sub.add_argument("--recommend-fid-budget", type=in_range(limits.FID_BUDGET), default=0.05, metavar="DELTA",
                     help="mark the ODE FID limit (1 + DELTA) x the quality expert's and the merge with the best "
                          "ODE NLL within it")

    sub = command("figure-fid-vs-nfe", report_commands.cmd_figure_fid_vs_nfe,
                  "FID against NFE: Heun at each step count, the adaptive ODE as a marker, per eta", "figure .png path")
    sub.add_argument("--fid", nargs="+", required=True, help="FID .json files of every sampler")
    sub.add_argument("--etas", nargs="+", required=True, help="the eta labels to draw")
    sub.add_argument("--title", default=None)

    sub = command("summary", report_commands.cmd_summary, "every eta's NLL, FID and VLB, and the paper's claims checked",
                  "summary .md path (the claims also as .csv beside it)")
    sub.add_argument("--named", type=key_value, nargs="+", action="extend", default=[], metavar="NAME=TEXT",
                     help="a named merge's eta label and what it merges, for its row")
    for flag in ("--nll", "--vlb", "--fid"):
        sub.add_argument(flag, nargs="+", required=True)
    sub.add_argument("--profile", default=None, help="a loss-profile CSV: adds L(gamma) of both experts")
    sub.add_argument("--predicted", default=None, help="a predict-vlb CSV: adds the predicted VLB per eta")
    sub.add_argument("--fid-budget", type=in_range(limits.FID_BUDGET), default=0.1,
                     help="a merge keeps the quality expert's FID if its ODE FID <= (1 + budget) x the expert's")
    sub.add_argument("--recommend-fid-budget", type=in_range(limits.FID_BUDGET), default=0.05, metavar="DELTA",
                     help="recommend the merge with the best ODE NLL whose ODE FID <= (1 + DELTA) x the quality "
                          "expert's (separate from --fid-budget, the paper's claim)")

    sub = command("figure-grid", report_commands.cmd_figure_grid, "Fig. 3 (fixed noise) or Figs. 6-7 (samples) per eta",
                  "figure .png path")
    sub.add_argument("--kind", choices=["fixed-noise", "samples"], required=True)
    sub.add_argument("--count", type=bounded_int(1, limits.MAX_GRID_IMAGES), required=True, help="rows (fixed-noise) or samples per panel")
    sub.add_argument("--shards", nargs="+", required=True, help="shard 0 of each eta, in column order")
    sub.add_argument("--title", default="")


# Flags taking many values, and how many they may take (an argument type sees one value at a time).
_MOST_VALUES = {"runs": limits.MAX_RUNS, "etas": limits.MAX_ETAS}


def check_value_counts(parser, args) -> None:
    for name, most in _MOST_VALUES.items():
        values = getattr(args, name, None)
        if values is not None and len(values) > most:
            parser.error(f"{args.command} --{name} takes at most {most} values, got {len(values)}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_plugins()  # a researcher's own samplers and tables are choices of the parser
    except ValueError as error:
        sys.stderr.write(f"expertmerge: error: {error}\n")
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    check_value_counts(parser, args)
    args.argv = argv  # train-recipe re-launches itself under torchrun with them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        check_output_path(args.out)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
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
