"""The experiment runner's command line (thin: all logic lives in importable modules).

  python -m experiments.main train --config experiments/configs/ddpm_digits.py[:smoke] --workdir DIR
  python -m experiments.main sample --workdir DIR [--num N] [--sampler ddpm|ddim] [--steps S] [--seed K]
  python -m experiments.main evaluate --workdir DIR
  python -m experiments.main sweep --workdir DIR --scales 0,1,3,5 [--guidance cfg|classifier|negative]
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m experiments.main", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train (or resume) a model")
  t.add_argument("--config", required=True, help="experiments/configs/NAME.py[:variant]")
  t.add_argument("--workdir", required=True)
  t.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                 help="override a config field (repeatable), e.g. --set train.num_steps=100")
  s = sub.add_parser("sample", help="sample from a trained workdir")
  s.add_argument("--workdir", required=True)
  s.add_argument("--num", type=int, default=64)
  s.add_argument("--sampler", choices=("ddpm", "ddim"), default=None)
  s.add_argument("--steps", type=int, default=None)
  s.add_argument("--eta", type=float, default=None)
  s.add_argument("--seed", type=int, default=0)
  e = sub.add_parser("evaluate", help="classifier-FID and friends for a trained workdir")
  e.add_argument("--workdir", required=True)
  e.add_argument("--num", type=int, default=None, help="number of samples (default: config)")
  w = sub.add_parser("sweep", help="guidance sweep: accuracy and classifier-FID per scale")
  w.add_argument("--workdir", required=True)
  w.add_argument("--scales", required=True, help="comma-separated guidance scales, e.g. 0,1,3,5")
  w.add_argument("--guidance", choices=("cfg", "classifier", "negative"), default="cfg")
  w.add_argument("--num", type=int, default=None, help="samples per scale (default: config)")
  w.add_argument("--sampler", choices=("ddpm", "ddim"), default=None)
  w.add_argument("--steps", type=int, default=None)
  w.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def block_sigterm():
  """Blocks SIGTERM in the calling thread. Called before jax starts any thread, every thread
  started afterwards (XLA's pools, checkpoint and TensorBoard writers) inherits the block, so
  a process-directed SIGTERM (a preemption notice) is never delivered into one of them in the
  middle of its work; the training loop takes it in a thread of its own
  (`experiments.loop.Terminate`), saves a checkpoint and stops. Returns the previous mask
  (None where signal masks do not exist), for `main` to restore."""
  if hasattr(signal, "pthread_sigmask"):
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
  return None


def main(argv=None) -> int:
  args = parse_args(argv)
  old_mask = block_sigterm() if args.command == "train" else None  # first: no jax thread yet
  try:
    return _run(args)
  finally:  # main() called in-process (tests, notebooks) leaves the mask as it found it
    if old_mask is not None:
      signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _run(args) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for name in ("absl", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from experiments.common import load_workdir_config
  from experiments.config import load_config
  from experiments.families import get_family
  if args.command == "train":
    config = load_config(args.config, args.set)
    out = get_family(config.family).train(config, args.workdir)
    print(json.dumps({k: v for k, v in out.items() if k != "state"}, default=str))
    return 0
  if args.command == "sweep":
    from experiments.guidance import sweep
    print(json.dumps(sweep(args.workdir, scales=args.scales, guidance=args.guidance, num=args.num,
                           sampler=args.sampler, steps=args.steps, seed=args.seed), indent=2))
    return 0
  family = get_family(load_workdir_config(args.workdir).family)
  if args.command == "sample":
    print(family.sample(args.workdir, num=args.num, sampler=args.sampler, steps=args.steps,
                        seed=args.seed, eta=args.eta))
  else:
    print(json.dumps(family.evaluate(args.workdir, num_samples=args.num), indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
