"""Multi-process training on JAX's own runtime: 2 CPU processes x 2 fake devices on localhost
(``jax.distributed`` with gloo collectives) against 1 process x 4 devices and 1 device; FSDP
against replicated; a checkpoint written by 2 processes restored in one; SIGTERM to one process
stopping both with a checkpoint. In-process (8 fake devices): the sharding rules, the global
mesh and the global batch.

This file is also the worker: ``python tests/test_parallel_multihost.py PORT ID OUT``.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import data as jdata
from jaxgen import parallel
from jaxgen.diffusion.schedules import make_schedule
from jaxgen.training import (TrainState, make_manager, make_train_step, restore_arrays,
                             train_loop)

PER_PROCESS_BATCH, NUM_PROCESSES, STEPS, MAX_STEPS = 4, 2, 3, 40
MIN_SIZE = 256  # the tiny model's kernels are sharded by the default FSDP rule


class TinyDenoiser(nn.Module):
  """An MLP noise predictor ``(x [B, 4, 4, 3], t [B]) -> eps``: the U-Net's signature."""

  @nn.compact
  def __call__(self, x, t, label=None, train=False):
    b = x.shape[0]
    h = nn.Dense(64)(x.reshape(b, -1)) + nn.Dense(64)(t[:, None].astype(jnp.float32) / 100.0)
    return nn.Dense(48)(nn.gelu(h)).reshape(x.shape)


def _source():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (64, 4, 4, 3)).astype(np.float32)
  return jdata.ArraySource("noise", "train", images, {})


@jax.jit  # one program instead of one per eager op
def _init():
  model = TinyDenoiser()
  x = jnp.zeros((1, 4, 4, 3))
  params = model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))["params"]
  # eps well above the gradients' rounding noise: Adam's first step is ~sign(g).
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2, eps=1e-3))
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _step_fn():
  step = make_train_step(TinyDenoiser(), make_schedule("linear", 100), ema_decay=0.9)
  key = jax.random.key(1)
  return jax.jit(lambda state, batch: step(state, batch, key), donate_argnums=0)


class _SlowLoader(jdata.Loader):
  def __next__(self):
    time.sleep(0.3)  # room for the test's SIGTERM to land mid-run
    return super().__next__()


def _train(workdir, mesh, num_steps, *, fsdp, slow=False, hooks=()):
  loader_cls = _SlowLoader if slow else jdata.Loader
  loader = loader_cls(_source(), PER_PROCESS_BATCH, seed=0)
  sharding = parallel.sharding_from_rules(mesh, min_size=MIN_SIZE) if fsdp else None
  return train_loop(_init, _step_fn(), num_steps=num_steps, workdir=workdir, loader=loader,
                    mesh=mesh, state_sharding=sharding, log_every=1, checkpoint_every=1,
                    max_to_keep=50, tensorboard=False, progress=False, hooks=hooks)


def _worker(port, pid, out):
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=NUM_PROCESSES, process_id=pid,
                             initialization_timeout=60)
  report = {}
  # Replicated to STEPS, then FSDP to MAX_STEPS, which the test stops by SIGTERM.
  for name, fsdp in (("replicated", False), ("fsdp", True)):
    mesh = parallel.make_global_mesh(fsdp=2 if fsdp else 1)
    res = _train(os.path.join(out, name), mesh, MAX_STEPS if fsdp else STEPS, fsdp=fsdp,
                 slow=fsdp)
    kernel = res.state.params["Dense_0"]["kernel"]
    report[name] = {"step": res.step, "terminated": res.terminated,
                    "spec": str(kernel.sharding.spec), "addressable": kernel.is_fully_addressable,
                    "local_shape": list(kernel.addressable_shards[0].data.shape)}
  with open(os.path.join(out, f"report_{pid}.json"), "w", encoding="utf-8") as f:
    json.dump(report, f)


# --- the test process ---------------------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(out):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")) + " --xla_force_host_platform_device_count=2"
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                       env.get("PYTHONPATH", "")])
  port = _free_port()
  return [subprocess.Popen([sys.executable, __file__, str(port), str(i), str(out)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
          for i in range(NUM_PROCESSES)]


def _wait(procs, out, timeout=150):
  deadline = time.time() + timeout
  try:
    outs = [p.communicate(timeout=max(deadline - time.time(), 1))[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o.decode(errors="replace")[-3000:]
  return [json.load(open(os.path.join(out, f"report_{i}.json"), encoding="utf-8"))
          for i in range(NUM_PROCESSES)]


class _GlobalLoader:
  """The global batches of the 2-process run, in one process (its two loaders side by side)."""

  def __init__(self, position=0):
    self.loaders = [jdata.Loader(_source(), PER_PROCESS_BATCH, seed=0, shard_index=i,
                                 num_shards=NUM_PROCESSES) for i in range(NUM_PROCESSES)]
    for _ in range(position):
      next(self)
    self.batch_size = PER_PROCESS_BATCH * NUM_PROCESSES

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(loader) for loader in self.loaders]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _reference(devices, num_steps, *, fsdp=False):
  """States after each step 1..num_steps trained in this process on `devices`."""
  mesh = parallel.make_global_mesh(fsdp=len(devices) if fsdp else 1, devices=devices)
  states = {}
  def keep(state, step):
    states[step] = jax.device_get(state.arrays())
  sharding = parallel.sharding_from_rules(mesh, min_size=MIN_SIZE) if fsdp else None
  res = train_loop(_init, _step_fn(), num_steps=num_steps, loader=_GlobalLoader(), mesh=mesh,
                   state_sharding=sharding, log_every=1, tensorboard=False, progress=False,
                   hooks=[(1, keep)])
  states[num_steps] = jax.device_get(res.state.arrays())
  return states


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _checkpoint(workdir, step):
  """The arrays of checkpoint `step` of `workdir`, restored in this process (one device)."""
  manager = make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    one = parallel.make_mesh(jax.devices()[:1])
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, parallel.replicate(_init(), one).arrays())
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return jax.device_get(out["state"]), out["data"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One 2-process launch: replicated for STEPS steps, then FSDP until SIGTERM reaches
  process 1 (sent once process 0 has logged STEPS FSDP steps). Returns the run directory,
  the reports, and where the FSDP run stopped."""
  out = tmp_path_factory.mktemp("two_processes")
  procs = _launch(out)
  metrics, deadline = os.path.join(out, "fsdp", "metrics.jsonl"), time.time() + 150
  while time.time() < deadline and not any(p.poll() is not None for p in procs):
    if os.path.exists(metrics) and len(open(metrics, encoding="utf-8").readlines()) >= STEPS:
      break
    time.sleep(0.01)
  procs[1].send_signal(signal.SIGTERM)
  reports = _wait(procs, out)
  return {"dir": out, "reports": reports, "stop": reports[0]["fsdp"]["step"]}


@pytest.fixture(scope="module")
def one_device(runs):
  """States after each step, trained in this process on one device."""
  return _reference(jax.devices()[:1], max(STEPS, runs["stop"]))


def _saved(runs, name, step):
  return _checkpoint(os.path.join(runs["dir"], name), step)


def test_two_processes_equal_one_process_of_four_devices_and_one_device(runs, one_device):
  """2 processes x 2 devices (data parallel, each process loading its own half of the batch)
  = 1 process x 4 devices = 1 device, after every step (max abs diff <= 1e-6)."""
  four = _reference(jax.devices()[:4], STEPS)
  assert all(r["replicated"]["step"] == STEPS for r in runs["reports"])
  for step in range(1, STEPS + 1):
    assert _max_diff(_saved(runs, "replicated", step)[0], one_device[step]) <= 1e-6
    assert _max_diff(four[step], one_device[step]) <= 1e-6


def test_fsdp_equals_replicated(runs, one_device):
  """FSDP over 2 processes (kernels split over the fsdp axis, not addressable from one
  process) = replicated over 2 processes = FSDP over 4 devices in one process."""
  for report in runs["reports"]:
    assert report["fsdp"]["spec"] == str(P(None, "fsdp")) and not report["fsdp"]["addressable"]
    assert report["fsdp"]["local_shape"] == [48, 32]  # [48, 64] split in two
    assert report["replicated"]["spec"] == str(P())
  fsdp4 = _reference(jax.devices()[:4], STEPS, fsdp=True)
  for step in range(1, STEPS + 1):
    fsdp = _saved(runs, "fsdp", step)[0]
    assert _max_diff(fsdp, _saved(runs, "replicated", step)[0]) <= 1e-6
    assert _max_diff(fsdp, one_device[step]) <= 1e-6
    assert _max_diff(fsdp4[step], one_device[step]) <= 1e-6


def test_two_process_fsdp_checkpoint_restores_in_one_process_and_trains_on(runs, tmp_path):
  """The 2-process FSDP checkpoint of step 2 restored in one process (1 device replicated,
  and 4 devices FSDP) takes the same next step as the 2-process run; each process's loader
  position was saved; `train_loop` resumes the run on one device (loaders start afresh)."""
  before, data = _saved(runs, "fsdp", STEPS - 1)
  after = _saved(runs, "fsdp", STEPS)[0]
  assert [d["position"] for d in data["process_data_states"]] == [STEPS - 1] * NUM_PROCESSES
  assert [d["shard_index"] for d in data["process_data_states"]] == [0, 1]
  batch = next(_GlobalLoader(position=STEPS - 1))
  for devices, fsdp in ((jax.devices()[:1], 1), (jax.devices()[:4], 4)):
    mesh = parallel.make_global_mesh(fsdp=fsdp, devices=devices)
    template = _init()
    shardings = parallel.state_shardings(template.arrays(), mesh, min_size=MIN_SIZE)
    state = template.replace_arrays(parallel.place(before, shardings))
    state, _ = _step_fn()(state, parallel.global_batch(batch, mesh))
    assert _max_diff(jax.device_get(state.arrays()), after) <= 1e-6
  shutil.copytree(os.path.join(runs["dir"], "replicated"), tmp_path / "run")
  res = _train(str(tmp_path / "run"), parallel.make_global_mesh(devices=jax.devices()[:1]),
               STEPS + 1, fsdp=False)
  assert res.resumed_from == STEPS and res.step == STEPS + 1


def test_sigterm_to_one_process_stops_both_with_a_checkpoint(runs, one_device):
  """SIGTERM reached process 1 only; both stopped at the same step with a checkpoint there
  that equals an uninterrupted run's state at that step, with each loader's position."""
  reports = [r["fsdp"] for r in runs["reports"]]
  assert all(r["terminated"] for r in reports), reports
  stop = runs["stop"]
  assert reports[1]["step"] == stop and STEPS <= stop < MAX_STEPS
  saved, data = _saved(runs, "fsdp", stop)
  assert [d["position"] for d in data["process_data_states"]] == [stop] * NUM_PROCESSES
  assert _max_diff(saved, one_device[stop]) <= 1e-6
  # read-only restore (sampling, evaluation) into a host state, onto this process's device
  host, step = restore_arrays(os.path.join(runs["dir"], "fsdp", "checkpoints"),
                              jax.device_get(_init()))
  assert step == stop and _max_diff(host.arrays(), saved) == 0


# --- in-process: rules, mesh, batch (8 fake devices) ---------------------------------------

def _abstract_state():
  return jax.eval_shape(_init).arrays()


def test_fsdp_rule_shards_the_largest_divisible_axis_and_mirrors_optimizer_state():
  mesh = parallel.make_global_mesh(fsdp=4)  # data=2 x fsdp=4
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert parallel.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
  assert parallel.fsdp_spec((130, 256), 4) == P(None, "fsdp")      # 130 is not divisible
  assert parallel.fsdp_spec((256, 256), 4) == P(None, "fsdp")      # a tie: the later axis
  assert parallel.fsdp_spec((3, 5, 7, 11), 4, min_size=1) == P()   # none divisible
  assert parallel.fsdp_spec((128,), 4) == P()                       # below min_size
  specs = parallel.state_specs(_abstract_state(), mesh, min_size=MIN_SIZE)
  kernel = P(None, "fsdp")
  assert specs["params"]["Dense_0"]["kernel"] == kernel             # [48, 64]
  assert specs["params"]["Dense_0"]["bias"] == P()
  assert specs["ema_params"]["Dense_0"]["kernel"] == kernel
  adam = specs["opt_state"][1][0]
  assert adam.mu["Dense_0"]["kernel"] == kernel and adam.nu["Dense_0"]["kernel"] == kernel
  assert adam.count == P() and specs["step"] == P()


def test_rules_first_match_wins_and_an_indivisible_rule_names_the_parameter():
  mesh = parallel.make_global_mesh(fsdp=4)
  arrays = _abstract_state()
  rules = [(r"Dense_2/kernel$", P("fsdp", None)), (r"Dense_0/", "replicate")]
  specs = parallel.state_specs(arrays, mesh, rules, min_size=MIN_SIZE)
  assert specs["params"]["Dense_2"]["kernel"] == P("fsdp", None)   # [64, 48]
  assert specs["params"]["Dense_0"]["kernel"] == P()
  assert specs["opt_state"][1][0].mu["Dense_2"]["kernel"] == P("fsdp", None)
  with pytest.raises(ValueError, match=r"'params/Dense_1/kernel' of shape \(1, 64\).*"
                     r"dimension 0 \(size 1\) is not divisible by the 8 devices"):
    parallel.state_specs(arrays, mesh, [(r"Dense_1/kernel", P(("data", "fsdp"), None))])
  with pytest.raises(ValueError, match="has no axis 'model'"):
    parallel.state_specs(arrays, mesh, [(r"kernel", P("model"))])


def test_a_rule_that_matches_no_parameter_warns():
  mesh = parallel.make_global_mesh(fsdp=2)
  with pytest.warns(UserWarning, match="'Dense_9/kernel' matches no parameter"):
    parallel.state_specs(_abstract_state(), mesh, [("Dense_9/kernel", P("fsdp"))])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    parallel.state_specs(_abstract_state(), mesh, [("Dense_1/kernel", "replicate")])


def test_global_mesh_errors_name_the_sizes():
  with pytest.raises(ValueError, match="larger than the 8 devices"):
    parallel.make_global_mesh(fsdp=4, data=4)
  with pytest.raises(ValueError, match="must multiply to the 8 devices"):
    parallel.make_global_mesh(fsdp=2, data=2)
  with pytest.raises(ValueError, match="not a multiple of fsdp x model = 3"):
    parallel.make_global_mesh(fsdp=3)
  mesh = parallel.make_global_mesh(fsdp=2, model=2)
  assert mesh.axis_names == ("data", "fsdp", "model") and parallel.data_parallel_size(mesh) == 4


def test_global_batch_splits_over_data_and_fsdp_and_rejects_an_indivisible_batch():
  mesh = parallel.make_global_mesh(fsdp=4)
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  batch = parallel.global_batch({"image": x}, mesh)["image"]
  assert batch.sharding.spec == P(("data", "fsdp")) and len(batch.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(batch), x)
  with pytest.raises(ValueError, match="must be a multiple of 8"):
    parallel.global_batch({"image": x[:12]}, mesh)


def test_distributed_set_up_reads_the_environment():
  assert not parallel.maybe_initialize_distributed(env={})        # a single process: no-op
  assert parallel.cluster_kind({}) is None
  assert parallel.cluster_kind({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None
  assert parallel.cluster_kind({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}) == "slurm"
  assert parallel.cluster_kind({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    parallel.maybe_initialize_distributed(env={"JAX_COORDINATOR_ADDRESS": "localhost:1"})
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
    parallel.maybe_initialize_distributed(env={"JAX_COORDINATOR_ADDRESS": "localhost:1",
                                               "JAX_NUM_PROCESSES": "two"})

if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
