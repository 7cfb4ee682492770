"""Writes tests/reference/frechet.npz: Fréchet distances computed by pytorch-fid.

Run with the reference venv (needs numpy, scipy, mpmath and pytorch-fid):

  /work/refvenv/bin/pip install --no-deps pytorch-fid
  /work/refvenv/bin/python tests/reference/generate_fid_fixtures.py

pytorch-fid's `fid_score` module imports torchvision (for its image loader and the
Inception network), which is not installed here. `calculate_frechet_distance` itself only
uses numpy and scipy, so this script puts stub `torchvision`, `torchvision.transforms`
and `pytorch_fid.inception` modules into `sys.modules` before the import; no network,
weights or torchvision code is involved in the values stored.

Each case stores float32 statistics (mu1, sigma1, mu2, sigma2); both references are
computed from these exact values upcast to float64:
  * `pytorch_fid`: pytorch-fid 0.3.0's `calculate_frechet_distance` (scipy `sqrtm`
    of S1 S2, with its eps retry on a singular product).
  * `exact`: the same closed form evaluated with 50-digit mpmath arithmetic
    (eigendecompositions of S1 and of S1^(1/2) S2 S1^(1/2)), to judge both
    implementations on rank-deficient cases.
"""
import os
import sys
import types

import mpmath
import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frechet.npz")


def _import_pytorch_fid():
  """Imports pytorch_fid.fid_score with torchvision and the Inception module stubbed."""
  torchvision = types.ModuleType("torchvision")
  transforms = types.ModuleType("torchvision.transforms")
  torchvision.transforms = transforms
  inception = types.ModuleType("pytorch_fid.inception")
  # Only the CLI uses the network; the module reads BLOCK_INDEX_BY_DIM for its parser.
  inception.InceptionV3 = types.SimpleNamespace(BLOCK_INDEX_BY_DIM={64: 0, 192: 1, 768: 2, 2048: 3})
  sys.modules.setdefault("torchvision", torchvision)
  sys.modules.setdefault("torchvision.transforms", transforms)
  sys.modules["pytorch_fid.inception"] = inception
  from pytorch_fid import fid_score  # pylint: disable=import-outside-toplevel
  return fid_score


def _features(rng, n, d, shift):
  """[n, d] correlated Gaussian features with uneven per-dimension scales."""
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  scales = np.exp(rng.normal(scale=0.5, size=d))
  return (rng.normal(size=(n, d)) @ mix) * scales + shift


def _stats(x):
  mu = x.mean(axis=0)
  sigma = np.cov(x, rowvar=False)
  return mu.astype(np.float32), sigma.astype(np.float32)


def _exact(mu1, sigma1, mu2, sigma2, dps=50):
  """The Dowson-Landau closed form in mpmath arithmetic (symmetric eigensolver)."""
  with mpmath.workdps(dps):
    s1 = mpmath.matrix(sigma1.tolist())
    s2 = mpmath.matrix(sigma2.tolist())
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    w, v = mpmath.eigsy(s1)
    d = s1.rows
    root = mpmath.matrix(d, d)
    for i in range(d):
      root[i, i] = mpmath.sqrt(max(w[i], 0))
    root = v * root * v.T
    inner = root * s2 * root
    inner = (inner + inner.T) / 2
    w2, _ = mpmath.eigsy(inner)
    tr_sqrt = sum(mpmath.sqrt(max(x, 0)) for x in w2)
    diff = mpmath.matrix((mu1 - mu2).tolist())
    total = (diff.T * diff)[0] + sum(s1[i, i] + s2[i, i] for i in range(d)) - 2 * tr_sqrt
    return float(total)


def main():
  fid_score = _import_pytorch_fid()
  rng = np.random.default_rng(20261125)
  cases = {}
  # Full-rank covariances (more samples than dimensions).
  cases["full_d8"] = _stats(_features(rng, 200, 8, 0.0)) + _stats(_features(rng, 150, 8, 0.3))
  cases["full_d64"] = _stats(_features(rng, 600, 64, 0.0)) + _stats(_features(rng, 500, 64, 0.1))
  # Rank-deficient covariances: fewer samples than dimensions.
  cases["rankdef_both_d32"] = (_stats(_features(rng, 12, 32, 0.0))
                               + _stats(_features(rng, 20, 32, 0.2)))
  cases["rankdef_one_d48"] = (_stats(_features(rng, 30, 48, 0.0))
                              + _stats(_features(rng, 400, 48, 0.0)))
  # Identical statistics: the distance is 0.
  mu, sigma = _stats(_features(rng, 100, 16, 0.5))
  cases["identical_d16"] = (mu, sigma, mu.copy(), sigma.copy())
  # Nearly identical: a tiny mean shift and a tiny PSD covariance perturbation.
  mu, sigma = _stats(_features(rng, 100, 16, 0.0))
  bump = _features(rng, 40, 16, 0.0)
  sigma_near = (sigma.astype(np.float64) + 1e-3 * np.cov(bump, rowvar=False)).astype(np.float32)
  mu_near = (mu + 1e-3 * rng.normal(size=16)).astype(np.float32)
  cases["near_d16"] = (mu, sigma, mu_near, sigma_near)

  out = {"cases": np.array(sorted(cases))}
  for name, (mu1, sigma1, mu2, sigma2) in sorted(cases.items()):
    args64 = [a.astype(np.float64) for a in (mu1, sigma1, mu2, sigma2)]
    ref = float(fid_score.calculate_frechet_distance(*args64))
    exact = _exact(*args64)
    rel = abs(ref - exact) / max(abs(exact), 1e-300)
    print(f"{name:18s} pytorch_fid={ref:.12g} exact={exact:.12g} rel.diff={rel:.2e}")
    for key, value in zip(("mu1", "sigma1", "mu2", "sigma2"), (mu1, sigma1, mu2, sigma2)):
      out[f"{name}/{key}"] = value
    out[f"{name}/pytorch_fid"] = np.float64(ref)
    out[f"{name}/exact"] = np.float64(exact)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
  main()
