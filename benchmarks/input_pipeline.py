"""Input pipeline throughput: `jaxgen.data.Loader` against `jaxgen.data.GrainLoader`.

Both iterate the embedded ``shapes`` train split (10,000 images 32x32x3) at batch 64 in this
process (GrainLoader with ``worker_count=0``, its default one read-ahead thread, and with no
thread); for reference, grain batching indices and reading each batch with one gather
(`grain_index_batches`, not a GrainLoader setting). Each setting takes one warm-up batch, then ``--batches`` timed batches; settings
alternate over ``--rounds`` and the median round is reported. Prints one JSON object with
batches/s per setting and the ratio GrainLoader / Loader. The result in
benchmarks/results/input_pipeline.json came from

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 taskset -c 0 python benchmarks/input_pipeline.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxgen import data  # noqa: E402  pylint: disable=wrong-import-position



def grain_index_batches(source, batch_size: int):
  """Not a GrainLoader setting: grain batches the shuffled *indices* and each batch is read
  with one ``source[indices]`` gather (as `Loader` reads), instead of one read per record."""
  import grain  # pylint: disable=import-outside-toplevel

  ds = grain.MapDataset.range(len(source)).shuffle(seed=0)
  ds = ds.apply(grain.transforms.Batch(batch_size, drop_remainder=True)).repeat()
  ds = ds.map(lambda idx: source[idx])
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


SETTINGS = {
    "loader": lambda src, b: data.Loader(src, b, seed=0, shard_index=0, num_shards=1),
    "grain": lambda src, b: data.GrainLoader(src, b, seed=0, shard_index=0, num_shards=1),
    "grain_no_read_thread": lambda src, b: data.GrainLoader(
        src, b, seed=0, shard_index=0, num_shards=1, read_threads=0, prefetch_batches=0),
    "grain_index_batches": grain_index_batches,
}


def batches_per_second(make, source, batch_size: int, num_batches: int) -> float:
  loader = make(source, batch_size)
  next(loader)  # builds grain's iterator; the shapes split is already generated
  start = time.perf_counter()
  for _ in range(num_batches):
    next(loader)
  seconds = time.perf_counter() - start
  if hasattr(loader, "close"):
    loader.close()
  return num_batches / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  source = data.get_source("shapes", "train")
  runs = {name: [] for name in SETTINGS}
  for _ in range(args.rounds):
    for name, make in SETTINGS.items():
      runs[name].append(batches_per_second(make, source, args.batch_size, args.batches))
  rates = {name: statistics.median(r) for name, r in runs.items()}
  print(json.dumps({
      "dataset": "shapes/train", "batch_size": args.batch_size, "batches": args.batches,
      "rounds": args.rounds, "cpus": len(os.sched_getaffinity(0)),
      "batches_per_s": {k: round(v, 1) for k, v in rates.items()},
      "examples_per_s": {k: round(v * args.batch_size) for k, v in rates.items()},
      "ratio_grain_over_loader": round(rates["grain"] / rates["loader"], 3),
      "ratio_grain_no_read_thread_over_loader": round(
          rates["grain_no_read_thread"] / rates["loader"], 3),
      "ratio_grain_index_batches_over_loader": round(
          rates["grain_index_batches"] / rates["loader"], 3),
      "versions": {"python": platform.python_version(), "grain": metadata.version("grain"),
                   "numpy": metadata.version("numpy")},
  }, indent=2))


if __name__ == "__main__":
  main()
