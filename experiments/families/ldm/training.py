"""``train`` of the ldm family: every stage in turn, then the U-Net (see
`experiments.families.ldm.runner` for what the U-Net trains on)."""
from __future__ import annotations

import jax
import numpy as np

from experiments import sharding
from experiments import workdir as W
from experiments.families.ldm import runner as R
from experiments.families.ldm import stages as S
from experiments.families.ldm.config import LDMExperiment
from experiments.families.ldm.sampling import prompt_grid
from jaxgen import data as jdata
from jaxgen.nn.unet_condition import init_unet_condition
from jaxgen.training import make_step_from_loss, train_loop


def train(config: LDMExperiment, workdir: str) -> dict:
  """Trains (or resumes) every stage in turn: the text encoder, the autoencoder, the U-Net.

  Returns:
    {"step", "loss", "terminated", "resumed_from", "state", "stages"} of the U-Net stage; when
    SIGTERM stops an earlier stage, step 0 and terminated True (training again resumes it).
  """
  config.validate()
  W.save_config(workdir, config)
  stage_out = S.train_stages(config, workdir)
  if any(isinstance(v, dict) and v.get("terminated") for v in stage_out.values()):
    return {"step": 0, "loss": float("nan"), "terminated": True, "resumed_from": None,
            "state": None, "stages": stage_out}
  dirs = S.stage_dirs(config, workdir)
  te = S.load_text_encoder(dirs["text_encoder"])
  ae = S.load_autoencoder(dirs["autoencoder"]) if dirs["autoencoder"] else None
  inputs = R.training_inputs(config, workdir, ae)
  model = R.build_model(config, inputs.input_shape, te.width)
  table = S.caption_embeddings(te)
  tc, root = config.train, jax.random.key(config.seed)
  init_key, train_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  scale = None if inputs.stats is None else inputs.stats["scale"]
  step_fn = jax.jit(make_step_from_loss(R.make_loss_fn(config, model, table, scale),
                                        ema_decay=tc.ema_decay, ema_warmup=tc.ema_warmup,
                                        accum_steps=tc.accum_steps),
                    donate_argnums=0)

  mesh, state_sharding = sharding.training_mesh(tc)

  def write_grid(state, step: int):
    if config.sample.num:
      # the stages this run already holds, with the U-Net's current EMA parameters
      params = sharding.gathered(state.ema_params, mesh)
      prompt_grid(R.Trained(config, workdir, te, ae, model, params, step,
                            inputs.stats, inputs.input_shape), seed=config.seed)

  out = train_loop(
      lambda: R.init_state(config, model, init_key),
      lambda state, batch: step_fn(state, batch, train_key),
      num_steps=tc.num_steps, workdir=workdir,
      loader=jdata.Loader(inputs.source, config.data.batch_size, seed=config.seed),
      batch_keys=("image", "caption"), mesh=mesh, state_sharding=state_sharding,
      image_shape=inputs.source.image_shape if ae is None else None,
      log_every=tc.log_every, checkpoint_every=tc.checkpoint_every, max_to_keep=tc.max_to_keep,
      hooks=[(tc.sample_every, write_grid)], at_end=[write_grid],
      run_record=W.run_record(config, "train", stages=dirs, latent_stats=inputs.stats,
                              parameters=_count(jax.eval_shape(
                                  lambda: init_unet_condition(model, init_key)))),
      desc=f"train ldm ({config.ldm.space} U-Net)",
      hint="Lower train.learning_rate before resuming.")
  summary = out.summary("loss")
  summary["stages"] = stage_out
  return summary


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
