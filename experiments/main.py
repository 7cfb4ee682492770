"""The experiment runner's command line (thin: every command lives in a family package).

  python -m experiments.main train --config experiments/configs/NAME.py[:variant] --workdir DIR [--set section.field=value]
  python -m experiments.main sample --workdir DIR [--num N] [--seed K] [family options]
  python -m experiments.main evaluate --workdir DIR [--num N]
  python -m experiments.main families
  python -m experiments.main COMMAND --workdir DIR ...   (a family's own command, e.g. sweep, edit)
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys


# Every family's sample options; a family takes those it lists in `Family.sample_options`.
SAMPLE_OPTIONS = {
    "sampler": dict(choices=("ddpm", "ddim"), help="diffusion sampler"),
    "steps": dict(type=int, help="diffusion sampling steps"),
    "eta": dict(type=float, help="DDIM eta"),
    "truncation_psi": dict(type=float, help="GAN truncation psi"),
}


def block_sigterm():
  """Blocks SIGTERM in the calling thread; returns the previous mask (None where signal masks
  do not exist).

  `main` calls it for ``train`` before numpy or jax start any thread: every thread started
  afterwards (XLA's pools, checkpoint and TensorBoard writers) inherits the block, so a
  process-directed SIGTERM (a preemption notice) is never delivered into one of them in the
  middle of its work; the training loop takes it in a thread of its own
  (`jaxgen.training.loop.Terminate`), saves a checkpoint and stops."""
  if hasattr(signal, "pthread_sigmask"):
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
  return None


def build_parser() -> argparse.ArgumentParser:
  from experiments.families import commands  # pylint: disable=import-outside-toplevel
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
  s.add_argument("--seed", type=int, default=0)
  for name, kw in SAMPLE_OPTIONS.items():
    s.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **kw)
  e = sub.add_parser("evaluate", help="the family's evaluation of a trained workdir")
  e.add_argument("--workdir", required=True)
  e.add_argument("--num", type=int, default=None, help="number of samples (default: config)")
  sub.add_parser("families", help="list the model families and their configs")
  for name, (fam, cmd) in commands().items():
    c = sub.add_parser(name, help=f"{cmd.help} ({fam.name})")
    c.add_argument("--workdir", required=True)
    cmd.add_arguments(c)
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  # First, before any numpy or jax thread exists (see block_sigterm).
  old_mask = block_sigterm() if argv[:1] == ["train"] else None
  try:
    return _run(build_parser().parse_args(argv))
  finally:  # main() called in-process (tests, notebooks) leaves the mask as it found it
    if old_mask is not None:
      signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _print(result) -> None:
  print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))


def _run(args) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for name in ("absl", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from experiments import config as C  # pylint: disable=import-outside-toplevel
  from experiments import workdir as W  # pylint: disable=import-outside-toplevel
  from experiments.families import commands, families, get_family  # pylint: disable=C0415
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  if args.command == "train":
    config = C.load_config(args.config, args.set)
    parallel.maybe_initialize_distributed()  # a no-op unless launched as several processes
    out = get_family(config.family).train(config, args.workdir)
    print(json.dumps({k: v for k, v in out.items() if k != "state"}, default=str))
    return 0
  if args.command == "families":
    _print(list_families(families()))
    return 0
  if args.command in ("sample", "evaluate"):
    family = get_family(W.load_config(args.workdir).family)
    if args.command == "evaluate":
      _print(family.evaluate(args.workdir, num_samples=args.num))
      return 0
    given = {k: getattr(args, k) for k in SAMPLE_OPTIONS if getattr(args, k) is not None}
    refused = sorted(set(given) - set(family.sample_options))
    if refused:
      raise ValueError(f"--{refused[0].replace('_', '-')} does not apply to the "
                       f"{family.name!r} family; its sample options: "
                       f"{['--' + o.replace('_', '-') for o in family.sample_options]}")
    _print(family.sample(args.workdir, num=args.num, seed=args.seed, **given))
    return 0
  _print(commands()[args.command][1].run(args))
  return 0


def list_families(fams) -> dict:
  """{family: {"description", "configs": [...]}} (each config file's family)."""
  from experiments import config as C  # pylint: disable=import-outside-toplevel
  out = {name: {"description": f.description, "configs": []} for name, f in fams.items()}
  for name in C.available_configs():
    family = C.load_config(name).family
    out.setdefault(family, {"description": "", "configs": []})["configs"].append(name)
  return out


if __name__ == "__main__":
  sys.exit(main())
