"""The `paper` target run for real at toy size: both data sets from local files in their published
formats, an NVlabs-format EDM pickle, VDM recipes trained for two steps, FID through clean-fid's
legacy-TensorFlow code path with a stand-in TorchScript Inception, and Tables 1-5 in the paper's layout."""
import copy
import hashlib
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import persistence_module
from PIL import Image
from test_datasets import write_cifar_tarball
from test_features import _StandIn
from test_imports import SMALL_DDPMPP, nvlabs_pickle, randomized
from test_pipeline import BASE, planned_jobs, snakemake, write_config

from expertmerge.networks.nvlabs_precond import VPPrecond

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|save|load)` is deprecated:FutureWarning")


def sha256(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def write_png_tar(path, count, seed):
    images = np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    with tarfile.open(path, "w") as archive:
        for i, image in enumerate(images):
            png = path.parent / f"{path.stem}-{i:08d}.png"
            Image.fromarray(image).save(png)
            archive.add(png, arcname=f"{path.stem}/{i:08d}.png")


def tiny_experiment(data, edm_download):
    return {
        "data": data,
        "experts": {
            "edm": {"role": "quality", "family": "edm", "noise_range": {"sigma_min": 0.002, "sigma_max": 80.0},
                    "fetch": {"download": edm_download, "format": "edm-pickle"}},
            "vdm": {"role": "likelihood", "family": "vdm", "noise_range": {"gamma_min": -13.3, "gamma_max": 5.0},
                    "recipe": {"name": "vdm-cifar10", "max_steps": 2, "batch_size": 2, "checkpoint_every": 1,
                               "log_every": 1, "network": {"embedding_dim": 16, "n_blocks": 1, "norm_groups": 8}}},
        },
        "fid": {"features": "inception", "weights": "inception.pt"},
        "etas": ["edm", 0.5, "vdm"],
        "sampling": {"num_samples": 10, "shard_size": 10, "batch_size": 10, "ode": {"rtol": 1e-2, "atol": 1e-2},
                     "ancestral": {"steps": 4}},
        "nll": {"rtol": 1e-2, "atol": 1e-2, "dequantization": "tn", "shards": 1, "batch_size": 10, "images": 2},
        "vlb": {"runs": 2},
        "figures": {"fixed_noise_rows": 2, "grid_samples": 4},
    }


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    sources = tmp_path_factory.mktemp("sources")
    write_cifar_tarball(sources / "cifar.tar.gz", count=2)
    write_png_tar(sources / "train_32x32.tar", 10, seed=1)
    write_png_tar(sources / "valid_32x32.tar", 4, seed=2)
    small = dict(SMALL_DDPMPP, img_resolution=32, model_channels=8)
    with persistence_module() as persistence:
        nvlabs_pickle(sources / "edm.pkl", randomized(VPPrecond(**small), seed=3), small,
                      persistence._reconstruct_persistent_obj, sources / "executed")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_StandIn().eval()), str(sources / "inception.pt"))
    config = copy.deepcopy(BASE)
    for name in ("cifar.tar.gz", "train_32x32.tar", "valid_32x32.tar", "edm.pkl", "inception.pt"):
        config["downloads"][name] = {"url": (sources / name).as_uri(), "checksum": sha256(sources / name)}
    config["experiments"]["cifar10"] = tiny_experiment({"source": "cifar10", "files": {"archive": "cifar.tar.gz"}},
                                                       "edm.pkl")
    config["experiments"]["imagenet32"] = tiny_experiment(
        {"source": "imagenet32", "files": {"train": "train_32x32.tar", "test": "valid_32x32.tar"}}, "edm.pkl")
    workdir = tmp_path_factory.mktemp("paper")
    write_config(workdir, config)
    snakemake(workdir, "paper")
    return workdir


def test_paper_tables_hold_both_data_sets(paper_run):
    tables = paper_run / "results" / "paper" / "tables"
    table1 = pd.read_csv(tables / "table1.csv")
    assert table1[["Dataset", "Metric"]].values.tolist() == [[dataset, metric] for dataset in ("CIFAR-10", "ImageNet32")
                                                             for metric in ("NLL", "NFE", "NFE batch")]
    assert list(table1.columns[2:]) == ["EDM", "0.5", "VDM"] and np.isfinite(table1.iloc[:, 2:].to_numpy(float)).all()
    table2 = pd.read_csv(tables / "table2.csv")
    assert table2["Metric"].tolist() == [f"{metric} ({sampler})" for sampler in ("ODE", "ancestral")
                                         for metric in ("FID", "NFE", "NFE batch")] * 2  # the batch the NFE shared
    assert np.isfinite(table2.iloc[:, 2:].to_numpy(float)).all()
    table4 = pd.read_csv(tables / "table4.csv")
    assert list(table4.columns) == ["Threshold", "CIFAR-10 Mean", "CIFAR-10 Std", "ImageNet32 Mean", "ImageNet32 Std"]
    for number, rows in ((3, 9), (5, 36)):
        table = pd.read_csv(tables / f"table{number}.csv", keep_default_na=False)
        measured = table[table["Section"] == "This pipeline (measured)"]
        assert len(table) == rows + len(measured) and len(measured) >= 3  # EDM, VDM and the merged model(s)
        imagenet = measured["ImageNet32 FID(↓)"]
        assert imagenet[imagenet != "-"].str.endswith("∗").all() and (imagenet != "-").sum() >= 3  # the original ImageNet32
        assert (tables / f"table{number}.md").read_text().startswith(f"Table {number}:")
    assert all((tables / f"table{n}.{ext}").stat().st_size > 0 for n in range(1, 6) for ext in ("md", "tex"))


def test_every_figure_is_drawn_and_nothing_is_left_to_do(paper_run):
    for name in ("cifar10", "imagenet32"):
        for figure in ("tradeoff", "fixed_noise", "samples_ode", "samples_ancestral"):
            assert (paper_run / "results" / name / "figures" / f"{figure}.png").stat().st_size > 0
    assert planned_jobs(paper_run, "paper") == {}


def test_report_shows_every_table_and_figure(paper_run):
    snakemake(paper_run, "--report", "report.html", "paper")
    report = (paper_run / "report.html").read_text(errors="replace")
    for name in ("tradeoff.png", "fixed_noise.png", "samples_ode.png", "samples_ancestral.png", "table3.csv"):
        assert name in report, name
