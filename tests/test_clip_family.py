"""The clip family end to end on the smoke config: the runner trains (tokenizer, then both
towers), evaluates (zero-shot, retrieval, similarity PNG) and samples; exact resume after
SIGTERM; zero-shot prediction from ensembled prompts against a hand-made case."""
import json
import os

import numpy as np
import pytest

from experiments.config import ConfigError, load_config

SMOKE = "experiments/configs/clip_shapes.py:smoke"


def test_clip_runner_end_to_end(tmp_path, capsys):
  from experiments.main import main
  workdir = str(tmp_path / "clip")
  assert main(["train", "--config", SMOKE, "--workdir", workdir]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["step"] == 4 and np.isfinite(summary["loss"])
  assert os.path.isfile(os.path.join(workdir, "tokenizer", "vocab.json"))
  assert main(["evaluate", "--workdir", workdir, "--num", "32"]) == 0
  result = json.load(open(os.path.join(workdir, "eval", "eval_step4.json")))
  assert set(result["zero_shot_accuracy"]) == {"shape", "color", "size", "position"}
  assert all(0 <= v <= 1 for v in result["zero_shot_accuracy"].values())
  assert 0 <= result["image_to_text_r1"] <= 1 and result["num_test_images"] == 32
  assert os.path.isfile(os.path.join(workdir, "eval", "similarity_step4.png"))
  assert main(["sample", "--workdir", workdir, "--num", "4"]) == 0
  assert os.path.isfile(os.path.join(workdir, "samples", "similarity_seed0_step4.png"))
  with pytest.raises(ValueError, match="--steps does not apply"):
    main(["sample", "--workdir", workdir, "--steps", "3"])


def test_clip_resume_after_sigterm_is_exact(sigterm_resume):
  from experiments.families.clip import train
  config = load_config(SMOKE, ["train.num_steps=6", "train.checkpoint_every=100"])
  sigterm_resume(train, config, num_steps=6)


def test_clip_config_errors():
  with pytest.raises(ConfigError, match=r"unknown field model\.widht.*'width'"):
    load_config(SMOKE, ["model.widht=32"])
  with pytest.raises(ConfigError, match=r"expected one of \['clip', 'siglip'\]"):
    load_config(SMOKE, ["train.loss=triplet"])
  with pytest.raises(ValueError, match="multiple of model.heads"):
    load_config(SMOKE, ["model.width=15"])


def test_zero_shot_uses_the_mean_of_every_caption_with_the_value():
  """Two captions per value of a one-attribute world: an image whose feature is the mean of
  value 1's caption features is predicted as value 1, for every attribute in turn."""
  from experiments.families.clip import data as CD
  from experiments.families.clip.evaluation import zero_shot
  texts, values = CD.caption_table()
  assert len(texts) == 216 and values.shape == (216, 4)
  assert texts[CD.caption_index(2, 1, 0, 4)] == "a small green triangle in the center"
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(216, 32))
  feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
  for a, k in enumerate(CD.SIZES):
    means = np.stack([feats[values[:, a] == v].mean(0) for v in range(k)])
    pred = zero_shot(means, feats, values)[CD.ATTRIBUTES[a]]
    np.testing.assert_array_equal(pred, np.arange(k))


def test_zero_shot_marginal_sums_caption_probabilities():
  """An image whose softmax mass is 0.4 on one 'circle' caption and 0.3 + 0.3 on two 'square'
  captions is a square by the marginal rule."""
  from experiments.families.clip import data as CD
  from experiments.families.clip.evaluation import zero_shot_marginal
  _, values = CD.caption_table()
  circle = CD.caption_index(0, 0, 0, 0)
  squares = [CD.caption_index(1, 0, 0, 0), CD.caption_index(1, 1, 0, 0)]
  caption_feats = np.eye(216)
  want = np.full(216, 1e-9)
  want[circle], want[squares] = 0.4, 0.3
  image = np.log(want)[None]           # logits = image @ eye = log p (scale 1)
  pred = zero_shot_marginal(image, caption_feats, values, 1.0)
  assert pred["shape"][0] == 1 and pred["color"][0] == 0 and pred["size"][0] == 0
