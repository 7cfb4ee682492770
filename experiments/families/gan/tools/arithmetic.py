"""Vector arithmetic on the latent means of attribute groups.

  python -m experiments.main arithmetic --workdir DIR --expr "large red circle - red + blue"
      [--space z|w] [--seed 0]
"""
from __future__ import annotations

import jax
import numpy as np

from experiments.families.gan.trained import (CONFIDENT, Trained, tool_command,
                                              output_path, write_output)
from jaxgen import gan
from jaxgen import metrics as M

__all__ = ["COMMAND", "arithmetic", "parse_expression"]


def parse_expression(expr: str, attributes) -> list[tuple[float, dict]]:
  """'large red circle - red + blue' -> [(1, {size: 1, color: 0, shape: 0}), (-1, ...), ...]:
  (sign, {attribute: value index}) per term. Multi-word values are written with underscores
  ('top_left')."""
  terms, sign = [], 1.0
  for token in expr.replace("+", " + ").replace("-", " - ").split():
    if token in "+-":
      sign = 1.0 if token == "+" else -1.0
      terms.append((sign, {}))
      continue
    if not terms:
      terms.append((1.0, {}))
    word = token.replace("_", " ")
    hits = [(a, v.index(word)) for a, v in attributes.items() if word in v]
    if not hits:
      raise ValueError(f"unknown attribute value {token!r}; known values: "
                       f"{ {a: v for a, v in attributes.items()} }.")
    terms[-1][1][hits[0][0]] = hits[0][1]
  if not terms or any(not q for _, q in terms):
    raise ValueError(f"bad expression {expr!r}: expected e.g. 'large red circle - red + blue'.")
  return terms


def arithmetic(t: Trained, expr: str, *, space: str = "z", num_latents: int = 5000,
               confidence: float = CONFIDENT, num_show: int = 8, seed: int = 0) -> str:
  """Group means of confidently classified samples (class probability >= `confidence`),
  combined as the expression says; the result (and small perturbations of it) is drawn in
  the last row, below `num_show` samples of each group.

  Returns:
    The grid's path ``WORKDIR/edits/arith_<expr>_<space>.png`` (+ .json, .run.json).
  """
  terms = parse_expression(expr, t.attributes)
  key = jax.random.key(seed)
  lat = np.asarray(t.latents(jax.random.normal(key, (num_latents, t.z_dim)), space))
  probs = M.classifier_predict(t.classifier(), t.images(lat, space))
  labels = {k: np.where(p.max(-1) >= confidence, p.argmax(-1), -1) for k, p in probs.items()}
  means = [gan.group_mean(lat, labels, q, min_count=3) for _, q in terms]
  result = np.asarray(gan.latent_arithmetic(means, [s for s, _ in terms]))
  rows = []
  for q in [q for _, q in terms]:
    idx = np.flatnonzero(gan.group_mask(labels, q))[:num_show]
    shown = np.concatenate([lat[idx], np.repeat(lat[idx[-1:]], num_show - len(idx), 0)])
    rows.append(t.images(shown, space))
  noise = 0.25 * np.asarray(jax.random.normal(jax.random.fold_in(key, 1),
                                              (num_show - 1, lat.shape[-1])))
  out = t.images(np.concatenate([result[None], result[None] + noise]), space)
  pred = M.classifier_predict(t.classifier(), out)
  record = {"expr": expr, "terms": [[s, q] for s, q in terms], "space": space,
            "group_sizes": [int(gan.group_mask(labels, q).sum()) for _, q in terms],
            "result_prediction": {k: t.attributes[k][int(v[0].argmax())] for k, v in pred.items()}}
  name = "arith_" + "".join(c if c.isalnum() else "_" for c in expr)[:60] + f"_{space}"
  return write_output(output_path(t, name, seed), np.concatenate(rows + [out]), num_show,
                      record, t, "arithmetic")


def add_arguments(p) -> None:
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--space", choices=("z", "w"), default="z")
  p.add_argument("--expr", required=True)


COMMAND = tool_command("vector arithmetic on attribute groups' latent means", add_arguments,
                       lambda t, a: arithmetic(t, a.expr, space=a.space, seed=a.seed))
