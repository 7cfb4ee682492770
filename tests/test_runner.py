"""End-to-end runner tests on the smoke config: outputs, exact resume after SIGTERM, NaN
handling, corrupt-checkpoint fallback and clear errors for bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from experiments.config import apply_override, load_config
from experiments.families.ddpm import runner as train_mod
from experiments.families.ddpm.evaluation import evaluate
from experiments.families.ddpm.runner import load_trained, sample
from experiments.main import main
from jaxgen import data as jdata
from jaxgen.training import CheckpointError

SMOKE = "experiments/configs/ddpm_digits.py:smoke"


def smoke_config(**overrides):
  config = load_config(SMOKE)
  for k, v in overrides.items():
    apply_override(config, f"{k}={v!r}")
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One smoke run through the command line: 6 steps, checkpoints at 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("smoke"))
  assert main(["train", "--config", SMOKE, "--workdir", workdir]) == 0
  return workdir


def test_train_writes_all_outputs(trained):
  assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["3", "6"]
  lines = [json.loads(l) for l in open(os.path.join(trained, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [2, 4, 6]
  assert all(np.isfinite(l["loss"]) and l["examples_per_sec"] > 0 for l in lines)
  run = json.load(open(os.path.join(trained, "run.json")))
  assert run["seed"] == 0 and run["config"]["name"] == "ddpm_digits"
  assert run["versions"]["jax"] == jax.__version__ and "schedule" in run
  samples = os.listdir(os.path.join(trained, "samples"))
  assert {"step_0000006.png", "step_0000006.npz", "run.json"} <= set(samples)
  assert any(f.startswith("events") for f in os.listdir(os.path.join(trained, "tensorboard")))


def test_sample_and_evaluate(trained):
  path = sample(trained, num=6, sampler="ddpm", steps=4, seed=3)
  assert os.path.isfile(path) and os.path.isfile(path[:-4] + ".npz")
  imgs = np.load(path[:-4] + ".npz")["images"]
  assert imgs.shape == (6, 8, 8, 1) and imgs.min() >= -1 and imgs.max() <= 1
  # The same seed gives the same images.
  again = np.load(sample(trained, num=6, sampler="ddpm", steps=4, seed=3)[:-4] + ".npz")
  np.testing.assert_array_equal(imgs, again["images"])
  with pytest.raises(ValueError, match="more than the 50 timesteps"):
    sample(trained, steps=51)
  result = evaluate(trained, num_samples=32)
  for k in ("fid_samples_vs_test", "fid_floor_train_vs_test", "fid_untrained_vs_test",
            "confident_fraction", "test_bpd"):
    assert np.isfinite(result[k]), k
  assert 0 <= result["confident_fraction"] <= 1 and sum(result["class_histogram"]) == 32
  assert os.path.isfile(os.path.join(trained, "classifier", "config.json"))  # cached


def test_corrupt_checkpoint_falls_back_to_previous(trained, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(trained, workdir)
  state_dir = os.path.join(workdir, "checkpoints", "6", "state")
  for root, _, files in os.walk(state_dir):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  assert load_trained(workdir).step == 3
  for s in ("3", "6"):
    shutil.rmtree(os.path.join(workdir, "checkpoints", s, "state"))
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    load_trained(workdir)


def test_resume_after_sigterm_is_exact(sigterm_resume):
  config = smoke_config(**{"train.checkpoint_every": 100, "sample.num": 0})
  sigterm_resume(train_mod.train, config, num_steps=6)


def test_blocked_sigterm_goes_to_the_loop_and_is_unblocked_after(tmp_path):
  """`main.block_sigterm` + `loop.Terminate`, in a process of their own: a process-directed
  SIGTERM sent before the loop stays pending in every thread (one started after the block
  stands for XLA's pools) and is taken by the loop; after the loop SIGTERM kills as usual."""
  script = tmp_path / "sig.py"
  script.write_text(textwrap.dedent("""
      import os, signal, threading, time
      from experiments.main import block_sigterm
      block_sigterm()  # as the runner does, before numpy / jax start threads
      from jaxgen.training.loop import Terminate, sigterm_blocked
      worker = threading.Thread(target=time.sleep, args=(2,), daemon=True)
      worker.start()
      os.kill(os.getpid(), signal.SIGTERM)  # the kernel may pick any thread that takes it
      print("blocked", sigterm_blocked(), flush=True)
      with Terminate() as term:
        deadline = time.time() + 10
        while not term.requested and time.time() < deadline:
          time.sleep(0.01)
        print("requested", term.requested, flush=True)
      print("blocked", sigterm_blocked(), flush=True)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(10)
      print("survived", flush=True)
      """))
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.stdout.split("\n")[:3] == ["blocked True", "requested True", "blocked False"], (
      out.stdout, out.stderr)
  assert out.returncode == -signal.SIGTERM and "survived" not in out.stdout


def test_cli_train_saves_and_stops_on_a_process_directed_sigterm(tmp_path):
  """The runner as a preemption meets it: `kill PID` (the kernel may pick any thread) while
  the model is built and compiled (XLA's threads busy) -> the signal waits, the loop takes it
  at its first step, saves a checkpoint there and the process exits 0, "terminated"."""
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")  # this worker's compiles
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.main", "train", "--config", SMOKE, "--workdir",
       str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
      cwd=os.path.dirname(os.path.dirname(__file__)))
  deadline = time.time() + 300  # run.json is written after the block, before the model
  while proc.poll() is None and time.time() < deadline and not (workdir / "run.json").exists():
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  summary = json.loads(stdout.strip().splitlines()[-1])
  assert summary["terminated"] and 1 <= summary["step"] < 6, summary
  assert os.listdir(workdir / "checkpoints") == [str(summary["step"])]
  assert "SIGTERM: saved a checkpoint" in stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(trained, tmp_path):
  workdir = str(tmp_path / "nan")
  shutil.copytree(trained, workdir)
  config = smoke_config(**{"train.num_steps": 12, "train.learning_rate": 1e30})
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    train_mod.train(config, workdir)
  assert load_trained(workdir).step == 6


def test_nan_in_batch_is_a_clear_error(tmp_path, monkeypatch):
  class NaNLoader(jdata.Loader):
    def __next__(self):
      batch = super().__next__()
      batch["image"][0, 0, 0, 0] = np.nan
      return batch

  monkeypatch.setattr(train_mod.jdata, "Loader", NaNLoader)
  with pytest.raises(ValueError, match="finite|NaN"):
    train_mod.train(smoke_config(), str(tmp_path / "w"))


@pytest.mark.parametrize("overrides, match", [
    ({"data.name": "imagenet21k"}, "imagenet21k"),
    ({"model.in_channels": 3}, "does not match the 1-channel"),
    ({"data.image_size": 9}, "multiples of 2"),
    ({"data.batch_size": 12}, "multiple of the 8 devices"),
])
def test_bad_config_errors_before_compile(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train_mod.train(smoke_config(**overrides), str(tmp_path / "w"))


def test_cli_errors(tmp_path):
  with pytest.raises(ValueError, match="available configs"):
    load_config("experiments/configs/no_such_config.py")
  with pytest.raises(ValueError, match="unknown variant"):
    load_config("experiments/configs/ddpm_digits.py:tiny")
  with pytest.raises(FileNotFoundError, match="train first"):
    sample(str(tmp_path))
  with pytest.raises(ValueError, match="unknown field"):
    load_config(SMOKE, ["train.num_stepz=3"])


def test_cifar10_smoke_on_mock_tfds(tmp_path):
  """The CIFAR-10 config's runner path end to end on tfds.testing.mock_data (no download)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = load_config("experiments/configs/ddpm_cifar10.py:smoke")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    out = train_mod.train(config, str(tmp_path / "c10"))
  assert out["step"] == 4 and np.isfinite(out["loss"])
  imgs = np.load(os.path.join(tmp_path, "c10", "samples", "step_0000004.npz"))["images"]
  assert imgs.shape == (8, 32, 32, 3)


def test_cifar10_config_is_the_paper_model():
  from experiments.families.ddpm.model import build_model
  from jaxgen.nn import count_params, param_shapes
  config = load_config("experiments/configs/ddpm_cifar10.py")
  model = build_model(config, (32, 32, 3), 10)
  assert abs(count_params(param_shapes(model)) - 35.7e6) / 35.7e6 < 0.005
  assert (config.train.learning_rate, config.data.batch_size, config.train.ema_decay,
          model.config.dropout) == (2e-4, 128, 0.9999, 0.1)


def test_sample_from_a_diffusers_checkpoint_folder(tmp_path):
  """The README's recipe: a diffusers UNet2DModel folder (+ scheduler config) -> PNG grid."""
  from experiments.sample_diffusers import sample_checkpoint
  folder = tmp_path / "ckpt"
  shutil.copytree("tests/reference/unet_attn", folder / "unet")
  (folder / "scheduler").mkdir()
  (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
      {"_class_name": "DDPMScheduler", "num_train_timesteps": 100, "beta_schedule": "linear",
       "clip_sample": True, "variance_type": "fixed_small", "prediction_type": "epsilon"}))
  out = sample_checkpoint(str(folder), str(tmp_path / "grid.png"), sampler="ddpm", steps=5,
                          num=3, batch=2)
  imgs = np.load(str(tmp_path / "grid.npz"))["images"]
  assert os.path.isfile(out) and imgs.shape == (3, 16, 16, 3)
  assert imgs.min() >= -1 and imgs.max() <= 1 and imgs.std() > 0
  with pytest.raises(ValueError, match="beta_schedule"):
    (folder / "scheduler" / "scheduler_config.json").write_text('{"beta_schedule": "exp"}')
    sample_checkpoint(str(folder), str(tmp_path / "g2.png"), steps=2, num=1, batch=1)


def test_fsdp_run_follows_the_replicated_run(trained, tmp_path):
  """``train.fsdp=4`` on the 8 test devices (data 2 x fsdp 4): the large kernels of the train
  state are split over ``fsdp``, and the logged losses are the replicated run's."""
  config = smoke_config(**{"train.fsdp": 4})
  out = train_mod.train(config, str(tmp_path))
  kernel = out["state"].params["time_embedding"]["linear_2"]["kernel"]  # 128 x 128
  assert "fsdp" in kernel.sharding.spec and kernel.addressable_shards[0].data.size == 128 * 32
  assert out["state"].params["conv_in"]["bias"].sharding.is_fully_replicated
  losses = [[l["loss"] for l in map(json.loads, open(os.path.join(d, "metrics.jsonl")))
             if "loss" in l] for d in (trained, str(tmp_path))]  # (evaluate adds lines)
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  assert os.path.isfile(os.path.join(tmp_path, "samples", "step_0000006.png"))
  with pytest.raises(ValueError, match="fsdp"):
    train_mod.train(smoke_config(**{"train.fsdp": 3}), str(tmp_path / "bad"))
