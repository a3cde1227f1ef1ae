"""The paper's experts in the workflow: the real config's plan, and a small real run from local files
(a CIFAR-10-format tarball, an NVlabs-format EDM pickle, a recipe trained for two steps)."""
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import persistence_module
from safetensors.torch import load_file
from test_datasets import write_cifar_tarball
from test_imports import SMALL_DDPMPP, nvlabs_pickle, randomized
from test_pipeline import BASE, REPO, planned_jobs, snakemake, write_config

from expertmerge.datasets import load_splits, save_splits
from expertmerge.experts.checkpoint import load_expert
from expertmerge.networks.nvlabs_precond import VPPrecond

BIN = Path(sys.executable).parent / "expertmerge"


def test_experts_target_plans_every_paper_job(tmp_path):
    write_config(tmp_path, BASE)
    assert planned_jobs(tmp_path, "experts") == {
        "fetch": 4,            # CIFAR-10 tarball, two ImageNet32 tars, the EDM pickle
        "dataset": 4,          # digits, digits3, cifar10, imagenet32
        "import_expert": 1,    # EDM CIFAR-10 from NVlabs' pickle
        "train_recipe": 3,     # VDM CIFAR-10, VDM ImageNet32, EDM ImageNet32: the last job of each chain
        "train_recipe_chunk": 7 + 24 + 4,  # the jobs before it: 10M / 1.25M, 2M / 80k, 976,563 / 200k steps
        "train_expert": 5,     # the demo's two experts, digits3's three
        "experts": 1,
    }


def file_url(path: Path) -> str:
    return path.resolve().as_uri()


@pytest.fixture(scope="module")
def small_paper_config(tmp_path_factory):
    """A config whose 'tiny' experiment is the paper's CIFAR-10 set-up at toy size, from local files."""
    sources = tmp_path_factory.mktemp("sources")
    write_cifar_tarball(sources / "cifar.tar.gz", count=2)
    net = randomized(VPPrecond(**dict(SMALL_DDPMPP, img_resolution=32)), seed=3)
    with persistence_module() as persistence:
        pickle_checksum = nvlabs_pickle(sources / "edm.pkl", net, dict(SMALL_DDPMPP, img_resolution=32),
                                        persistence._reconstruct_persistent_obj, sources / "executed")
    config = copy.deepcopy(BASE)
    config["downloads"].update({
        "cifar.tar.gz": {"url": file_url(sources / "cifar.tar.gz"),
                         "checksum": "md5:" + hashlib.md5((sources / "cifar.tar.gz").read_bytes()).hexdigest()},
        "edm.pkl": {"url": str(sources / "edm.pkl"), "checksum": pickle_checksum},
    })
    config["experiments"]["tiny"] = {
        "data": {"source": "cifar10", "files": {"archive": "cifar.tar.gz"}},
        "experts": {
            "edm": {"role": "quality", "family": "edm", "noise_range": {"sigma_min": 0.002, "sigma_max": 80.0},
                    "fetch": {"download": "edm.pkl", "format": "edm-pickle"}},
            "vdm": {"role": "likelihood", "family": "vdm", "noise_range": {"gamma_min": -13.3, "gamma_max": 5.0},
                    "recipe": {"name": "vdm-cifar10", "max_steps": 2, "batch_size": 2, "checkpoint_every": 1,
                               "log_every": 1, "network": {"embedding_dim": 32, "n_blocks": 1, "norm_groups": 8}}},
        },
    }
    return config, net, sources


TINY_EXPERTS = ["results/tiny/experts/fetch/edm.safetensors", "results/tiny/experts/recipe/vdm.safetensors"]


def test_small_paper_experts_are_built_from_local_files(tmp_path, small_paper_config):
    config, net, sources = small_paper_config
    write_config(tmp_path, config)
    snakemake(tmp_path, *TINY_EXPERTS)

    splits = load_splits(tmp_path / "results/tiny/data/splits.npz")
    assert splits["train"].shape == (10, 32, 32, 3) and splits["test"].shape == (2, 32, 32, 3)
    assert (tmp_path / "resources/downloads/edm.pkl").read_bytes() == (sources / "edm.pkl").read_bytes()
    edm = load_expert(tmp_path / "results/tiny/experts/fetch/edm")
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.01, 10.0])
    # NVlabs trains on k/127.5 - 1: seen in our coordinates through x' = (256/255) x, s' = (256/255) s.
    a = 256 / 255
    torch.testing.assert_close(edm.denoise(x, sigma), net(a * x, a * sigma) / a, rtol=1e-5, atol=1e-5)
    assert edm.meta["pixels"] == {"scale": 1 / 127.5, "offset": -1.0} and edm.image_shape == (3, 32, 32)
    vdm = load_expert(tmp_path / "results/tiny/experts/recipe/vdm")
    assert vdm.meta["network"] == "VDMUNet" and vdm.meta["training"]["steps"] == 2
    assert torch.isfinite(vdm.denoise(x, sigma)).all()
    assert (tmp_path / "results/tiny/training/vdm/training-state.pt").is_file()  # what a re-run resumes from
    assert not (sources / "executed").exists()
    assert planned_jobs(tmp_path, *TINY_EXPERTS) == {}  # nothing left to do


def test_a_recipe_longer_than_one_job_trains_as_a_chain_equal_to_one_run(tmp_path, small_paper_config):
    """steps_per_job 2 of 5 steps: jobs to steps 2 and 4, then the last one; each hands its training state
    to the next, which removes it once used. The expert equals one uninterrupted `train-recipe`."""
    config, _, _ = small_paper_config
    config = copy.deepcopy(config)
    config["experiments"]["tiny"]["experts"]["vdm"]["recipe"].update(max_steps=5, steps_per_job=2)
    write_config(tmp_path, config)
    target = TINY_EXPERTS[1]
    assert planned_jobs(tmp_path, target) == {"fetch": 1, "dataset": 1, "train_recipe_chunk": 2, "train_recipe": 1}
    snakemake(tmp_path, target)
    logs = tmp_path / "results/tiny/logs/train_recipe"
    assert "resuming from step 2 of 5 (this job stops at 4)" in (logs / "vdm-4.log").read_text()
    assert "resuming from step 4 of 5 (this job stops at 5)" in (logs / "vdm.log").read_text()
    assert not list((tmp_path / "results/tiny/training/vdm").glob("state-*.pt"))  # temporary: used up
    recipe = config["experiments"]["tiny"]["experts"]["vdm"]["recipe"]
    whole = subprocess.run([str(BIN), "train-recipe", "--recipe", "vdm-cifar10", "--family", "vdm", "--gamma-min",
                            "-13.3", "--gamma-max", "5", "--data", str(tmp_path / "results/tiny/data/splits.npz"),
                            "--workdir", str(tmp_path / "whole"), "--max-steps", "5", "--batch-size", "2",
                            "--network", json.dumps(recipe["network"]), "--out", str(tmp_path / "whole/vdm")],
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    chained, single = (load_file(f"{stem}.safetensors") for stem in (tmp_path / target.removesuffix(".safetensors"),
                                                                      tmp_path / "whole/vdm"))
    assert chained.keys() == single.keys() and all(torch.equal(chained[key], single[key]) for key in chained)
    assert planned_jobs(tmp_path, target) == {}


def test_checksum_mismatch_fails_and_leaves_no_output(tmp_path, small_paper_config):
    config, _, _ = small_paper_config
    config = copy.deepcopy(config)
    config["downloads"]["cifar.tar.gz"]["checksum"] = "md5:" + "0" * 32
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "results/tiny/data/splits.npz", check=False)
    assert result.returncode != 0
    assert not (tmp_path / "resources/downloads/cifar.tar.gz").exists()
    assert not (tmp_path / "results/tiny/data/splits.npz").exists()
    log = (tmp_path / "results/logs/fetch/cifar.tar.gz.log").read_text()
    assert "md5 checksum mismatch" in log and "expected " + "0" * 32 in log


def test_hand_placed_file_is_checked_when_read(tmp_path, small_paper_config):
    config, _, _ = small_paper_config
    write_config(tmp_path, config)
    placed = tmp_path / "resources/downloads/cifar.tar.gz"
    placed.parent.mkdir(parents=True)
    write_cifar_tarball(placed, count=3)  # a well-formed tarball, but not the configured file
    result = snakemake(tmp_path, "results/tiny/data/splits.npz", check=False)
    assert result.returncode != 0 and not (tmp_path / "results/tiny/data/splits.npz").exists()
    assert "md5 checksum mismatch" in (tmp_path / "results/tiny/logs/dataset.log").read_text()


def test_unreachable_download_says_where_to_place_the_file(tmp_path):
    out = tmp_path / "resources" / "file.bin"
    result = subprocess.run([str(BIN), "fetch", "--source", "http://127.0.0.1:9/file.bin", "--checksum",
                             "sha256:" + "0" * 64, "--out", str(out), "--timeout", "5"], capture_output=True, text=True)
    assert result.returncode == 1 and not out.exists()
    assert "http://127.0.0.1:9/file.bin" in result.stderr and "place the file by hand at " + str(out) in result.stderr


def test_recipe_runs_under_torchrun_with_two_processes(tmp_path, small_paper_config):
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    save_splits(tmp_path / "splits.npz", {"train": images, "test": images[:2]})
    network = json.dumps({"embedding_dim": 32, "n_blocks": 1, "norm_groups": 8})
    env = {**os.environ, "PATH": f"{BIN.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([str(BIN), "train-recipe", "--recipe", "vdm-cifar10", "--family", "vdm", "--gamma-min",
                             "-13.3", "--gamma-max", "5.0", "--data", str(tmp_path / "splits.npz"), "--workdir",
                             str(tmp_path / "work"), "--gpus", "2", "--max-steps", "2", "--batch-size", "4",
                             "--network", network, "--out", str(tmp_path / "vdm")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launching 2 processes" in result.stderr
    assert load_expert(tmp_path / "vdm").meta["training"]["world_size"] == 2


def test_rerun_of_a_recipe_resumes_from_its_training_state(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    save_splits(tmp_path / "splits.npz", {"train": images, "test": images[:2]})
    network = json.dumps({"embedding_dim": 32, "n_blocks": 1, "norm_groups": 8})

    def train(max_steps):
        return subprocess.run([str(BIN), "train-recipe", "--recipe", "vdm-cifar10", "--family", "vdm", "--gamma-min",
                               "-13.3", "--gamma-max", "5", "--data", str(tmp_path / "splits.npz"), "--workdir",
                               str(tmp_path / "work"), "--max-steps", str(max_steps), "--batch-size", "2",
                               "--checkpoint-every", "1", "--network", network, "--out", str(tmp_path / "vdm")],
                              capture_output=True, text=True, timeout=600)

    assert train(1).returncode == 0
    second = train(2)
    assert second.returncode == 0 and "from step 1 of 2" in second.stderr
    assert load_expert(tmp_path / "vdm").meta["training"]["steps"] == 2


def with_change(change):
    config = copy.deepcopy(BASE)
    change(config)
    return config


@pytest.mark.parametrize("change, message", [
    (lambda c: c["experiments"]["cifar10"]["experts"]["vdm"].update(noise_range={"gamma_min": -10.0, "gamma_max": 5.0}),
     r"recipe 'vdm-cifar10' trains on gamma \[-13.3, 5\]"),
    (lambda c: c["experiments"]["cifar10"]["experts"]["vdm"].update(family="edm"),
     "recipe 'vdm-cifar10' trains a 'vdm' expert, but the expert's family is 'edm'"),
    (lambda c: c["experiments"]["cifar10"]["experts"]["edm"].update(path={"path": "x.pkl", "format": "edm-pickle"}),
     "is valid under each of"),  # two ways of making one expert
    (lambda c: c["downloads"]["edm-cifar10-32x32-uncond-vp.pkl"].update(checksum="sha1:abc"), "does not match"),
    (lambda c: c["experiments"]["cifar10"]["data"]["files"].update(archive="cifar.tgz"),
     "names the download 'cifar.tgz', which is not under downloads"),
    (lambda c: c.update(demo="cifar100"), "must name an experiment with measurements"),
    (lambda c: c["experiments"]["imagenet32"].pop("vlb"), r"configures \[.*\] but not \['vlb'\]; give all or none"),
    (lambda c: c["experiments"]["cifar10"]["fid"].update(weights="inception.pt"),
     "fid.weights names the download 'inception.pt', which is not under downloads"),
    (lambda c: c["experiments"]["cifar10"].update(loss_profile={"split": "val", "points": 89, "batch_size": 64}),
     "loss_profile.split 'val' is not a split of cifar10"),
])
def test_bad_paper_config_is_refused_when_planning(tmp_path, change, message):
    write_config(tmp_path, with_change(change))
    result = snakemake(tmp_path, "-n", "experts", check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), (result.stdout + result.stderr)[-3000:]


PAPER_JOBS = {
    "fetch": 5,                 # CIFAR-10, two ImageNet32 tars, the EDM pickle, the Inception weights
    "dataset": 2, "import_expert": 1, "train_recipe": 3, "train_recipe_chunk": 35, "reference_statistics": 2,
    "sample_shard": 1300,       # 2 data sets x 5 samplers (ODE, ancestral, Heun 5/9/18) x 13 etas (the paper's 12
                                # and auto) x 10 shards of 5000
    "nll_shard": 780,           # 13 etas x (CIFAR-10: 10, ImageNet32: 50) shards of 1000 test images
    "vlb_run": 260,             # 2 x 13 etas x 10 runs
    "trunk_samples": 360,       # the shared trunks: 2 data sets x (ODE, ancestral) x 10 shards x 9 anchors (0.9 down
                                # to 0.1, eta_min's)
    "trunk_nll": 480,           # (10 + 50) test shards x 8 anchors (0.1 up to 0.8, eta_max's)
    "fid": 130, "table1": 2, "table2": 2, "table4": 2, "summary": 2,
    "figure_tradeoff": 2, "figure_fixed_noise": 2, "figure_samples": 4, "figure_fid_vs_nfe": 2,
    "paper_table": 3, "literature_table": 2, "paper": 1,
    "loss_profile_shard": 20,   # eta auto's input: 2 x 10 shards of the 10,000 selection images (train)
    "loss_profile": 2, "auto_switch": 2, "predict_vlb": 2, "figure_loss_profile": 2, "figure_predicted_vlb": 2,
}
GPU_RULES = {"reference_statistics", "train_recipe", "train_recipe_chunk", "sample_shard", "nll_shard", "vlb_run",
             "loss_profile_shard", "trunk_samples", "trunk_nll"}


def dry_run_jobs(workdir, *args, cwd=None):
    """[(rule, outputs, resources, shell command)] of a dry-run, parsed from Snakemake's job listing."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "-n", "-p", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd or workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            field = lambda name: (re.search(rf"^\s+{name}: (.*)$", block, flags=re.M) or [None, ""])[1]
            shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
            jobs.append((rule[1], field("output"), field("resources"), shell[1] if shell else ""))
    return jobs


def test_paper_target_plans_every_table_and_figure(tmp_path):
    write_config(tmp_path, BASE)
    assert planned_jobs(tmp_path, "paper") == PAPER_JOBS


def test_slurm_profile_plans_the_same_jobs_and_gives_gpus_to_gpu_rules_only(tmp_path):
    write_config(tmp_path, BASE)
    jobs = dry_run_jobs(tmp_path, "--profile", "slurm", "paper", cwd=REPO)  # as the README runs it
    counts = {}
    for rule, _, resources, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
        gpus = re.search(r"\bgpu=(\d+)", resources)
        assert (rule in GPU_RULES) == bool(gpus), (rule, resources)
        if rule.startswith("train_recipe"):  # every job of a training chain on 8 GPUs of one node
            assert gpus[1] == "8" and "runtime=2880" in resources and re.search(r"\bnodes=1\b", resources)
        if rule in GPU_RULES - {"train_recipe", "train_recipe_chunk"}:
            assert gpus[1] == "1" and "slurm_partition=<gpu-partition>" in resources
    assert counts == PAPER_JOBS


def test_local_gpu_profile_plans_the_same_jobs(tmp_path):
    write_config(tmp_path, BASE)
    jobs = dry_run_jobs(tmp_path, "--profile", "local-gpu", "paper", cwd=REPO)
    assert len(jobs) == sum(PAPER_JOBS.values())
    assert all(("gpu=" in resources) == (rule in GPU_RULES) for rule, _, resources, _ in jobs)


def test_changing_one_eta_replans_only_that_eta_and_the_aggregates(tmp_path):
    write_config(tmp_path, BASE)
    before = {output: (rule, shell) for rule, output, _, shell in dry_run_jobs(tmp_path, "paper")}
    config = copy.deepcopy(BASE)
    config["experiments"]["cifar10"]["etas"][4] = 0.35  # 0.3 -> 0.35
    write_config(tmp_path, config)
    after = {output: (rule, shell) for rule, output, _, shell in dry_run_jobs(tmp_path, "paper")}
    new = [after[output][0] for output in after.keys() - before.keys()]
    gone = [before[output][0] for output in before.keys() - after.keys()]
    changed = sorted(after[output][0] for output in after.keys() & before.keys() if after[output] != before[output])
    assert sorted(new) == sorted(gone) == sorted(["sample_shard"] * 50 + ["nll_shard"] * 10 + ["vlb_run"] * 10
                                                 + ["fid"] * 5)
    assert all("/0.35/" in output or "/0.35." in output for output in after.keys() - before.keys())
    # jobs whose inputs are the new eta's results: CIFAR-10's tables and figures, the paper tables; and the ones
    # that name every eta: the predicted VLB, its figure, the loss-profile figure's eta marks (not the profile)
    assert changed == sorted(["figure_fixed_noise", "figure_samples", "figure_samples", "figure_tradeoff",
                              "literature_table", "literature_table", "paper_table", "paper_table", "paper_table",
                              "summary", "table1", "table2", "table4",
                              "predict_vlb", "figure_predicted_vlb", "figure_loss_profile", "figure_fid_vs_nfe"])


def test_paths_from_config_reach_the_shell_quoted(tmp_path):
    """A path with spaces and shell syntax in config.yaml (an expert's file, the download folder) reaches every
    job's command as one word: a dry run's commands split back into the same path, and nothing runs."""
    import shlex

    hostile = "my models/x.pt;touch PWNED;echo"
    (tmp_path / "my models").mkdir()
    (tmp_path / hostile).write_bytes(b"not read by a dry run")
    config = copy.deepcopy(BASE)
    config["download_dir"] = "my downloads"
    config["experiments"]["cifar10"]["experts"]["vdm"].pop("recipe")
    config["experiments"]["cifar10"]["experts"]["vdm"]["path"] = {"path": hostile, "format": "vdm-checkpoint"}
    write_config(tmp_path, config)
    jobs = dry_run_jobs(tmp_path, "experts")
    words = [shlex.split(shell) for rule, _, _, shell in jobs if shell]
    assert words and all("touch" not in command for command in words)
    assert any(hostile in command for command in words)  # the import's --input, one word
    assert any(any(word.startswith("my downloads/") for word in command) for command in words)
    assert not (tmp_path / "PWNED").exists()
