"""The shared training loop on the two trainers without a data loader of their own (the
feature classifier of classifier-FID and the noise-aware guidance classifier): exact resume
after SIGTERM; and the typed configs: misspelt keys and wrong types fail naming the key."""
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from experiments.config import ConfigError, apply_override, load_config
from jaxgen import data as jdata
from jaxgen import metrics as M
from jaxgen.training import NonFiniteLossError, Terminated


def _sigterm_when(path: str, timeout: float = 120.0):
  """Sends SIGTERM to the main thread (where the loop's handler runs) once `path` has a line."""
  def watch():
    deadline = time.time() + timeout
    while not (os.path.exists(path) and os.path.getsize(path)) and time.time() < deadline:
      time.sleep(0.002)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


@pytest.fixture(scope="module")
def digits():
  return jdata.load_all(jdata.get_source("digits", "train"))


CLASSIFIER = dict(num_steps=200, batch_size=16, features=(8, 8), embed_dim=8)


def test_feature_classifier_resumes_exactly_after_sigterm(digits, tmp_path):
  """Straight through vs stopped by SIGTERM (after its first metrics line) and resumed: the
  same parameters bit for bit, and the stopped call raises `Terminated` with the step saved."""
  x, y = digits["image"], {"label": digits["label"]}
  key = jax.random.key(3)
  straight = M.train_classifier(x, y, key=key, **CLASSIFIER, workdir=str(tmp_path / "full"))
  cut = str(tmp_path / "cut")
  watcher = _sigterm_when(os.path.join(cut, "metrics.jsonl"))
  with pytest.raises(Terminated, match="checkpoint at step"):
    M.train_classifier(x, y, key=key, **CLASSIFIER, workdir=cut)
  watcher.join()
  saved = sorted(int(s) for s in os.listdir(os.path.join(cut, "checkpoints")))
  assert saved and 0 < saved[-1] < CLASSIFIER["num_steps"]
  resumed = M.train_classifier(x, y, key=key, **CLASSIFIER, workdir=cut)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  # Trained again, the finished run runs no step and keeps its last checkpoint.
  again = M.train_classifier(x, y, key=key, **CLASSIFIER, workdir=cut)
  assert sorted(int(s) for s in os.listdir(os.path.join(cut, "checkpoints")))[-1] == 200
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  # In memory (no workdir) the same training gives the same parameters.
  memory = M.train_classifier(x, y, key=key, **CLASSIFIER)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(memory.params)):
    np.testing.assert_array_equal(a, b)


def test_cached_classifier_is_trained_again_for_another_number_of_steps(digits, tmp_path,
                                                                        monkeypatch, capsys):
  """A cached judge is reused only at the number of steps and architecture asked for; at
  another it is trained afresh (equal to a first training at that number, not resumed from the old run)."""
  from experiments import workdir as W
  x, y = digits["image"][:64], {"label": digits["label"][:64]}
  small = dict(batch_size=8, features=(4, 4), embed_dim=4, key=jax.random.key(1))
  path = str(tmp_path / "clf")
  W.cached_classifier(path, x, y, num_steps=3, **small)
  calls, train = [], M.train_classifier
  monkeypatch.setattr(M, "train_classifier", lambda *a, **k: calls.append(k["num_steps"])
                      or train(*a, **k))
  assert W.cached_classifier(path, x, y, num_steps=3, **small).info["num_steps"] == 3
  assert calls == []  # loaded, not trained
  again = W.cached_classifier(path, x, y, num_steps=5, **small)
  assert calls == [5] and again.info["num_steps"] == 5
  assert "trained for 3 steps, not the 5 asked for" in capsys.readouterr().out
  fresh = train(x, y, num_steps=5, **small)
  for a, b in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  # Another architecture at the same number of steps is trained again too.
  wider = W.cached_classifier(path, x, y, num_steps=5, **{**small, "features": (4, 8)})
  assert calls == [5, 5] and wider.config.features == (4, 8)
  assert "has features=(4, 4), not the (4, 8) asked for" in capsys.readouterr().out


def test_feature_classifier_nan_loss_stops(digits):
  with pytest.raises(NonFiniteLossError, match="loss is nan"):
    M.train_classifier(digits["image"], {"label": digits["label"]}, key=jax.random.key(0),
                       num_steps=30, batch_size=8, features=(8, 8), embed_dim=8,
                       learning_rate=1e30)


def test_noisy_classifier_resumes_exactly_after_sigterm(sigterm_resume):
  from experiments.families.guidance import train_noisy_classifier
  config = load_config("experiments/configs/classifier_guidance_digits.py:smoke",
                       ["noisy_classifier.num_steps=6", "noisy_classifier.batch_size=8"])

  def train(config, workdir):
    return train_noisy_classifier(config, workdir)

  full, resumed = sigterm_resume(train, config, num_steps=6)
  assert set(full["test_accuracy_at_t"]) == set(resumed["test_accuracy_at_t"])


@pytest.mark.parametrize("override, match", [
    ("train.num_stepz=3", r"unknown field train\.num_stepz.*'num_steps'"),
    ("train.num_steps=many", r"train\.num_steps='many': expected an int"),
    ("train.lr_decay=linear", r"train\.lr_decay='linear': expected one of \['constant', 'cosine'\]"),
    ("sample.sampler=euler", r"expected one of \['ddpm', 'ddim'\]"),
    ("model.block_out_channel=(8,)", r"unknown field model\.block_out_channel.*'block_out_channels'"),
    ("model.layers_per_block=1.5", r"model\.layers_per_block=1\.5: expected an int"),
    ("diffusion.clip_sample=1", r"expected True or False"),
    ("nosection.x=1", r"no config section 'nosection'"),
    ("seed=x", r"seed='x': expected an int"),
])
def test_config_errors_name_the_key(override, match):
  config = load_config("experiments/configs/ddpm_digits.py:smoke")
  with pytest.raises(ConfigError, match=match):
    apply_override(config, override)


def test_config_overrides_are_typed_and_round_trip(tmp_path):
  from experiments import workdir as W
  config = load_config("experiments/configs/ddpm_digits.py:smoke",
                       ["train.learning_rate=1", "model.block_out_channels=[16, 16]",
                        "sample.steps=7"])
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  assert config.model["block_out_channels"] == (16, 16) and config.sample.steps == 7
  W.save_config(str(tmp_path), config)
  assert W.load_config(str(tmp_path)) == config
  # A config.json edited by hand is checked the same way.
  text = open(tmp_path / "config.json").read().replace('"num_steps"', '"num_stepps"')
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ConfigError, match="num_stepps"):
    W.load_config(str(tmp_path))


def test_family_registry_lists_every_config():
  from experiments.families import families
  from experiments.main import list_families
  listed = list_families(families())
  assert {"ddpm", "cfg", "classifier_guidance"} <= set(listed)
  assert "ddpm_digits" in listed["ddpm"]["configs"]
  assert "classifier_guidance_digits" in listed["classifier_guidance"]["configs"]
  with pytest.raises(ValueError, match="unknown model family 'nope'"):
    from experiments.families import get_family
    get_family("nope")
