"""The GAN family's tools, each a command of the runner on a trained workdir:

  interpolate  strips between the latents of consecutive seeds
  invert       projection of images into W / W+
  edit         a supervised direction: fitted, measured, drawn (`edit.EditOptions`)
  arithmetic   vector arithmetic on attribute groups' latent means
  discover     unsupervised directions (Voynov & Babenko)
  objects      an object count of the edit evaluation samples
  directions   the measurements of every supervised direction, as a table
  clip-edit    text-driven edits with a trained CLIP (StyleCLIP: optimisation, global
               directions in style space) and the colour-edit measurement
  clip-generate  text to image: the latent optimised for a prompt from the mean w

Every tool loads the workdir with `experiments.families.gan.trained.load_trained` and writes
its PNG + JSON + run.json under ``WORKDIR/edits`` with its `write_output`.
"""
from experiments.families.gan.tools import (arithmetic, clip_edit, clip_generate, directions,
                                            discover, edit, interpolate, invert, objects)

COMMANDS = {
    "interpolate": interpolate.COMMAND,
    "invert": invert.COMMAND,
    "edit": edit.COMMAND,
    "arithmetic": arithmetic.COMMAND,
    "discover": discover.COMMAND,
    "objects": objects.COMMAND,
    "directions": directions.COMMAND,
    "clip-edit": clip_edit.COMMAND,
    "clip-generate": clip_generate.COMMAND,
}

__all__ = ["COMMANDS"]
