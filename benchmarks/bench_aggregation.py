"""Aggregating 50k samples of one (sampler, eta) into its FID, as the `fid` rule does, on synthetic shards.

Usage: python benchmarks/bench_aggregation.py [--samples 50000] [--shard-size 5000] [--features 2048]

Writes shards like `expertmerge sample` does (uint8 32x32x3 images, float32 Inception-sized features,
NFE) to a temporary directory, then runs `expertmerge fid` on them in a subprocess and prints its wall
time, its CPU time (user + system, all threads) and its peak resident memory, and how many bytes of
the shards it read (only the features and NFE members, never the images).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from expertmerge.frechet import save_statistics, statistics
from expertmerge.shards import save_sample_shard


def write_shards(directory: Path, samples: int, shard_size: int, dim: int) -> list[Path]:
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((dim, dim)).astype(np.float32) / np.sqrt(dim)  # correlated features
    paths = []
    for k, start in enumerate(range(0, samples, shard_size)):
        n = min(shard_size, samples - start)
        path = directory / f"shard{k}.npz"
        save_sample_shard(path, images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                          seeds=np.arange(start, start + n), nfe=np.full(n, 150),
                          features=(rng.standard_normal((n, dim), dtype=np.float32) @ mixing),
                          record={"eta_label": "0.3", "eta": 0.3, "switch_eta": 0.3, "gamma_min": -13.3,
                                  "gamma_max": 8.76, "sampler": "ode"})
        paths.append(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--features", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_shards(tmp, args.samples, args.shard_size, args.features)
        reference = np.random.default_rng(1).standard_normal((4 * args.features, args.features))
        save_statistics(tmp / "reference.npz", *statistics(reference), num_images=len(reference))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "expertmerge"), "fid", "--reference",
                        str(tmp / "reference.npz"), "--shards", *map(str, shards), "--out", str(tmp / "fid.json")],
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        shard_bytes = sum(p.stat().st_size for p in shards)
        result = json.loads((tmp / "fid.json").read_text())[0]
    print(f"{args.samples} samples in {len(shards)} shards ({shard_bytes / 1e6:.0f} MB on disk, of which "
          f"features {args.samples * args.features * 4 / 1e6:.0f} MB are read), {args.features} features")
    print(f"expertmerge fid: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {after.ru_maxrss / 1024:.0f} MiB; "
          f"FID {result['fid']:.2f} +- {result['fid_spread']:.2f} over {result['seed_groups']} seed groups")


if __name__ == "__main__":
    main()
