"""The ldm family (Stable Diffusion in miniature): the held-out split, every stage trained by one
``train``, exact resume of the autoencoder and U-Net stages, ``generate`` and its errors, and
``evaluate`` end to end, on the smoke config."""
import json
import os
import jax
import numpy as np
import pytest

from experiments import config as C
from experiments import main as runner
from experiments.families.ldm import stages as S
from experiments.families.ldm.runner import load_trained
from experiments.families.ldm.training import train
from experiments.families.ldm.sampling import pipeline, sample_images
from jaxgen import data as jdata

SMOKE = "experiments/configs/ldm_shapes.py:smoke"


def smoke(**overrides):
  return C.load_config(SMOKE, [f"{k}={v!r}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ldm") / "run")
  out = train(smoke(), path)
  assert out["step"] == 4 and not out["terminated"]
  return path


def test_held_out_combinations_leave_the_train_split_only():
  full = jdata.load_all(jdata.get_source("shapes", "train"))
  kept = jdata.load_all(jdata.get_source("shapes", "train", held_out=True))
  mask = jdata.shapes_held_out_mask(*(full[k] for k in ("shape", "color", "size", "position")))
  assert len(jdata.SHAPES_HELD_OUT) == 10 and len(set(jdata.SHAPES_HELD_OUT)) == 10
  assert mask.sum() > 0 and len(kept["image"]) == len(full["image"]) - mask.sum()
  np.testing.assert_array_equal(kept["image"], full["image"][~mask])
  assert not jdata.shapes_held_out_mask(
      *(kept[k] for k in ("shape", "color", "size", "position"))).any()
  for a, n in (("shape", 3), ("color", 4), ("size", 2), ("position", 9)):
    assert set(kept[a].tolist()) == set(range(n))  # every value is still seen
  # the test split keeps the combinations to test on; only shapes can hold them out
  assert jdata.get_source("shapes", "test", held_out=True).held_out is False
  with pytest.raises(ValueError, match="train split"):
    jdata.ShapesSource("test", held_out=True)
  with pytest.raises(ValueError, match="shapes"):
    jdata.get_source("digits", "train", held_out=True)


def test_train_runs_every_stage_without_the_held_out_combinations(workdir):
  for sub, family in ((S.TEXT_ENCODER_DIR, "clip"), (S.AUTOENCODER_DIR, "autoencoder")):
    with open(os.path.join(workdir, sub, "config.json"), encoding="utf-8") as f:
      stage = json.load(f)
    assert stage["family"] == family and stage["data"]["held_out"] is True
  with open(os.path.join(workdir, S.LATENT_STATS), encoding="utf-8") as f:
    stats = json.load(f)
  assert stats["num_images"] == len(jdata.get_source("shapes", "train", held_out=True))
  assert stats["scale_from_std"] == pytest.approx(1.0 / stats["std"])
  t = load_trained(workdir)
  assert t.step == 4 and t.input_shape == (16, 16, 4)  # the smoke VAE halves once
  assert t.stats["scale"] == pytest.approx(stats["scale_from_std"])
  pipe = pipeline(t, "ddim")
  assert pipe.vae.config.scaling_factor == pytest.approx(stats["scale_from_std"])
  assert pipe.tokenizer.model_max_length == t.text_encoder.length == 16
  grid = os.path.join(workdir, "samples", "grid_seed0_step4.png")
  assert os.path.isfile(grid)
  with np.load(grid[:-4] + ".npz") as z:
    assert z["images"].dtype == np.uint8 and z["images"].shape == (16, 32, 32, 3)


def test_caption_table_rows_are_the_text_encoders_hidden_states(workdir):
  t = load_trained(workdir)
  table = S.caption_embeddings(t.text_encoder)
  assert table.shape == (217, 16, t.text_encoder.width)
  from experiments.families.clip import data as CD
  texts = CD.caption_table()[0]
  ids = t.text_encoder.tokenizer([texts[5], ""])
  direct = t.text_encoder.model.apply({"params": t.text_encoder.params}, ids)[0]
  np.testing.assert_allclose(table[[5, S.EMPTY]], np.asarray(direct), rtol=1e-5, atol=1e-6)


def test_generate_writes_a_grid_uint8_images_and_the_prompts(workdir):
  prompts = ["a large blue square on the left", "a small red circle in the center"]
  argv = ["generate", "--workdir", workdir, "--num", "3", "--steps", "2", "--guidance", "2.5",
          "--sampler", "dpmpp_2m", "--negative-prompt", "red", "--seed", "4"]
  for p in prompts:
    argv += ["--prompt", p]
  assert runner.main(argv) == 0
  path = os.path.join(workdir, "samples", "generate_seed4_step4.png")
  assert os.path.isfile(path)
  with np.load(path[:-4] + ".npz") as z:
    images, saved = z["images"], z["prompts"].tolist()
  assert images.dtype == np.uint8 and images.shape == (6, 32, 32, 3)
  assert saved == [prompts[0]] * 3 + [prompts[1]] * 3
  with open(path[:-4] + ".run.json", encoding="utf-8") as f:
    record = json.load(f)
  assert record["prompts"] == prompts and record["negative_prompt"] == "red"
  assert record["guidance"] == 2.5 and record["sampler"] == "dpmpp_2m"
  # the same call through the library gives the same images
  again = sample_images(load_trained(workdir), saved, jax.random.key(4), guidance=2.5, steps=2,
                        sampler="dpmpp_2m", negative_prompts="red")
  np.testing.assert_array_equal(again, images)


def test_generate_refuses_bad_input(workdir, capsys):
  with pytest.raises(ValueError, match="--prompt"):
    runner.main(["generate", "--workdir", workdir])
  with pytest.raises(SystemExit):
    runner.main(["generate", "--workdir", workdir, "--prompt", "a circle", "--guidance", "lots"])
  assert "must be a number" in capsys.readouterr().err
  with pytest.raises(ValueError, match="'clip' workdir"):
    runner.main(["generate", "--workdir", os.path.join(workdir, S.TEXT_ENCODER_DIR),
                 "--prompt", "a circle"])
  long = " ".join(["a small red circle at the top left"] * 3)
  with pytest.warns(UserWarning, match="truncated"):
    images = sample_images(load_trained(workdir), [long], jax.random.key(0), steps=1)
  assert images.shape == (1, 32, 32, 3)


def test_config_errors_are_named(workdir):
  with pytest.raises(C.ConfigError, match="data.held_out"):
    smoke(**{"data.held_out": False})
  with pytest.raises(C.ConfigError, match="ldm.prompt_dropout"):
    smoke(**{"ldm.prompt_dropout": 1.0})
  given_text = {"stages.text_encoder_workdir": os.path.join(workdir, S.TEXT_ENCODER_DIR)}
  with pytest.raises(C.ConfigError, match="'clip' config"):
    train(smoke(**given_text, **{"stages.autoencoder": "clip_shapes:smoke"}), workdir + "_wrong")
  # a given stage workdir must have been trained without the held-out combinations
  other = os.path.join(os.path.dirname(workdir), "all_combinations")
  from experiments import workdir as W
  W.save_config(other, C.load_config("clip_shapes:smoke"))
  with pytest.raises(ValueError, match="held_out"):
    train(smoke(**{"stages.text_encoder_workdir": other}), workdir + "_unheld")


def _stages_given(workdir, **more):
  return smoke(**{"stages.text_encoder_workdir": os.path.join(workdir, S.TEXT_ENCODER_DIR),
                  "stages.autoencoder_workdir": os.path.join(workdir, S.AUTOENCODER_DIR),
                  **more})


def test_unet_stage_resumes_exactly_after_sigterm(workdir, tmp_path, monkeypatch,
                                                  sigterm_on_batch):
  """Stopped at step 3 and resumed, the U-Net stage ends bit for bit where the module's
  uninterrupted run (same stages, seed and data) ended."""
  from experiments import workdir as W
  from experiments.families.ldm.runner import init_state
  config = _stages_given(workdir, **{"sample.num": 0})
  sigterm_on_batch(3)
  cut = train(config, str(tmp_path / "cut"))
  assert cut["terminated"] and cut["step"] == 3
  monkeypatch.undo()
  resumed = train(config, str(tmp_path / "cut"))
  assert resumed["resumed_from"] == 3 and resumed["step"] == 4
  assert resumed["stages"] == {"text_encoder": "given", "autoencoder": "given"}
  t = load_trained(workdir)
  straight, _ = W.restore(workdir, lambda: init_state(t.config, t.model, jax.random.key(0)))
  for x, y in zip(jax.tree.leaves(straight.arrays()), jax.tree.leaves(resumed["state"].arrays())):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_autoencoder_stage_resumes_exactly_after_sigterm(workdir, tmp_path, monkeypatch,
                                                         sigterm_on_batch):
  """SIGTERM while the autoencoder stage trains: the ldm run stops; trained again, the stage
  resumes and ends bit for bit where the uninterrupted stage of the module's run ended."""
  config = smoke(**{"stages.text_encoder_workdir": os.path.join(workdir, S.TEXT_ENCODER_DIR),
                    "sample.num": 0})
  sigterm_on_batch(3)
  cut = train(config, str(tmp_path / "cut"))
  assert cut["terminated"] and cut["stages"]["autoencoder"]["step"] == 3
  assert not os.path.isdir(str(tmp_path / "cut" / "checkpoints"))  # the U-Net never started
  monkeypatch.undo()
  done = train(config, str(tmp_path / "cut"))
  assert done["stages"]["autoencoder"]["resumed_from"] == 3 and done["step"] == 4
  a = S.load_autoencoder(os.path.join(workdir, S.AUTOENCODER_DIR))
  b = S.load_autoencoder(str(tmp_path / "cut" / S.AUTOENCODER_DIR))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluate_reports_every_measure(workdir):
  out = runner.main(["evaluate", "--workdir", workdir])
  assert out == 0
  with open(os.path.join(workdir, "eval", "eval_step4.json"), encoding="utf-8") as f:
    result = json.load(f)
  for block in ("seen", "held_out"):
    assert 0.0 <= result[block]["all_four"] <= 1.0
    assert set(result[block]["per_attribute"]) == {"shape", "color", "size", "position"}
  assert len(result["held_out"]["per_prompt"]) == 10
  assert set(result["guidance_sweep"]) == {"1", "3"}
  for row in result["guidance_sweep"].values():
    assert -1.0 <= row["clip_score"] <= 1.0 and row["classifier_fid"] >= 0.0
  neg = result["negative_prompt"]
  assert {"without", "with_red", f"with_{neg['most_frequent_colour']}"} <= set(neg)
  assert sum(neg["without"]["colour_shares"].values()) == pytest.approx(1.0)
  assert result["sampling_seconds_per_image"] > 0
  for name in ("nearest", "negative", "held_out", "guidance"):
    assert os.path.isfile(os.path.join(workdir, "eval", f"{name}_step4.png"))


def test_pixel_variant_shapes_without_training():
  """The pixel-space comparison model (``ldm_shapes:pixel``): its loss on image batches and its
  guided sampler trace to the right shapes (`jax.eval_shape`: nothing is compiled)."""
  import jax.numpy as jnp
  from experiments.families.ldm import runner as R
  from jaxgen.pipelines import guided_sample
  config = C.load_config("ldm_shapes:pixel")
  assert config.ldm.space == "pixel"
  assert S.stage_dirs(config, "d")["autoencoder"] is None
  model = R.build_model(config, (32, 32, 3), 64)
  state = jax.eval_shape(lambda: R.init_state(config, model, jax.random.key(0)))
  loss_fn = R.make_loss_fn(config, model, jnp.zeros((217, 16, 64)), None)
  batch = {"image": jnp.zeros((2, 32, 32, 3)), "caption": jnp.zeros((2,), jnp.int32)}
  loss, _ = jax.eval_shape(loss_fn, state.params, batch, jax.random.key(1), 0)
  assert loss.shape == ()
  ctx = jnp.zeros((2, 16, 64))
  out = jax.eval_shape(lambda p: guided_sample(
      model, p, R.scheduler_config(config, "ddim"), ctx, ctx, jnp.zeros((2, 32, 32, 3)),
      jax.random.key(2), num_inference_steps=3, guidance_scale=2.0), state.params)
  assert out.shape == (2, 32, 32, 3)
