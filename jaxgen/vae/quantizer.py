"""Vector quantisation (VQ-VAE, van den Oord et al. 2017): nearest-code lookup with the
straight-through estimator, the codebook and commitment losses, EMA codebook updates with
Laplace smoothing (appendix A.1 of the paper; Razavi et al. 2019), dead-code restart
(Dhariwal et al. 2020, Jukebox) and codebook usage metrics.

The codebook is a `CodebookState` pytree. Under `jax.jit` with a batch sharded over devices
every reduction over the batch (code counts, sums of assigned vectors, the restart pool) is
already global, so the replicated codebook stays identical on every device; under
`jax.pmap` pass `axis_name` and the same statistics are `psum`-ed / gathered explicitly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class CodebookState(struct.PyTreeNode):
  """The codebook and its EMA statistics.

  `embedding = embed_sum / smoothed(cluster_size)` after every EMA update. Both statistics
  start as if each code had been used once (`cluster_size = 1`, `embed_sum = embedding`),
  so an unused code keeps its vector instead of collapsing to zero.
  """
  embedding: jax.Array     # [K, D]
  cluster_size: jax.Array  # [K] EMA of per-step assignment counts
  embed_sum: jax.Array     # [K, D] EMA of per-step sums of assigned encoder outputs


class Quantized(struct.PyTreeNode):
  """Output of `quantize`."""
  z_q: jax.Array              # [..., D] straight-through quantised latents (value e_k)
  indices: jax.Array          # [...] int32 code indices
  codebook_loss: jax.Array    # [] mean ||sg[z_e] - e||^2 (gradient reaches the codebook only)
  commitment_loss: jax.Array  # [] mean ||z_e - sg[e]||^2 (gradient reaches the encoder only)


def check_codebook_size(num_codes: int, dim: int) -> None:
  for name, v in (("codebook size (num_codes)", num_codes), ("code dimension", dim)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")


def init_codebook(key: jax.Array, num_codes: int, dim: int, scale: float | None = None
                  ) -> CodebookState:
  """A codebook of `num_codes` vectors of size `dim`, uniform in [-scale, scale]
  (default 1 / num_codes, as in the reference implementations)."""
  check_codebook_size(num_codes, dim)
  scale = 1.0 / num_codes if scale is None else scale
  emb = jax.random.uniform(key, (num_codes, dim), jnp.float32, -scale, scale)
  return CodebookState(embedding=emb, cluster_size=jnp.ones((num_codes,), jnp.float32),
                       embed_sum=emb)


def nearest_code(z: jax.Array, embedding: jax.Array) -> jax.Array:
  """argmin_k ||z - e_k||^2 for each vector.

  Args:
    z: [..., D].
    embedding: [K, D].
  Returns:
    [...] int32 indices (ties go to the lower index).
  """
  if z.shape[-1] != embedding.shape[-1]:
    raise ValueError(f"latent vectors of size {z.shape[-1]} cannot be matched to codes of size "
                     f"{embedding.shape[-1]}: set the encoder's latent_channels to the code dim")
  flat = z.reshape(-1, z.shape[-1])
  d = (jnp.sum(flat * flat, axis=-1, keepdims=True) - 2.0 * flat @ embedding.T
       + jnp.sum(embedding * embedding, axis=-1)[None, :])  # [N, K]
  return jnp.argmin(d, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])


def quantize(z_e: jax.Array, embedding: jax.Array) -> Quantized:
  """Quantises encoder outputs to their nearest codes (van den Oord et al. 2017, eq. 1-3).

  The forward value of `z_q` is e_k; its gradient with respect to z_e is the identity
  (straight-through: z_q = z_e + sg[e_k - z_e]). The two loss terms are returned apart so
  that the caller weighs them: L = L_rec + codebook_loss + beta * commitment_loss.

  Args:
    z_e: encoder output [..., D].
    embedding: codebook [K, D] (pass `sg(embedding)` for an EMA codebook).
  Returns:
    `Quantized`.
  """
  idx = nearest_code(z_e, embedding)
  e = jnp.take(embedding, idx, axis=0)  # [..., D]
  z_q = z_e + jax.lax.stop_gradient(e - z_e)
  codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z_e) - e))
  commitment_loss = jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(e)))
  return Quantized(z_q=z_q, indices=idx, codebook_loss=codebook_loss,
                   commitment_loss=commitment_loss)


def vq_loss(reconstruction: jax.Array, q: Quantized, beta: float, *,
            codebook_term: bool = True) -> jax.Array:
  """VQ-VAE objective (van den Oord et al. 2017, eq. 3) with beta on the commitment term:
  L_rec + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2. With an EMA codebook the middle term
  is replaced by the EMA update (`codebook_term=False`)."""
  loss = reconstruction + beta * q.commitment_loss
  return loss + q.codebook_loss if codebook_term else loss


def code_counts(indices: jax.Array, num_codes: int, axis_name: str | None = None) -> jax.Array:
  """[K] float32 number of vectors assigned to each code in the (global) batch."""
  counts = jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  return counts if axis_name is None else jax.lax.psum(counts, axis_name)


def codebook_metrics(counts: jax.Array) -> dict[str, jax.Array]:
  """Perplexity exp(H(p)) of the code distribution p = counts / sum(counts) and the fraction
  of codes used. A uniform use of all K codes gives perplexity K."""
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"perplexity": jnp.exp(entropy), "codes_used": jnp.mean((counts > 0).astype(jnp.float32))}


def ema_update(state: CodebookState, z_e: jax.Array, indices: jax.Array, *, decay: float,
               eps: float = 1e-5, axis_name: str | None = None) -> CodebookState:
  """One EMA codebook update (van den Oord et al. 2017, appendix A.1, eq. 6-8):

    N_k <- decay N_k + (1 - decay) n_k,    m_k <- decay m_k + (1 - decay) sum_{i: k_i = k} z_i,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (n + K eps) * n,  n = sum_k N_k

  (Laplace smoothing keeps rarely used codes finite). n_k and the sums are over the global
  batch: under sharded jit the batch reductions are global already, under pmap they are
  psum-ed over `axis_name`.

  Args:
    state: the codebook.
    z_e: encoder outputs [..., D] (gradients are stopped).
    indices: their codes [...] (from `quantize`).
    decay: EMA decay in [0, 1).
    eps: Laplace smoothing epsilon.
    axis_name: pmap axis, or None.
  Returns:
    The updated `CodebookState`.
  """
  k, d = state.embedding.shape
  flat = jax.lax.stop_gradient(z_e).reshape(-1, d)
  onehot = jax.nn.one_hot(indices.reshape(-1), k, dtype=flat.dtype)  # [N, K]
  counts = jnp.sum(onehot, axis=0)  # [K]
  sums = onehot.T @ flat  # [K, D]
  if axis_name is not None:
    counts, sums = jax.lax.psum((counts, sums), axis_name)
  cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
  embed_sum = decay * state.embed_sum + (1.0 - decay) * sums
  n = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (n + k * eps) * n
  return CodebookState(embedding=embed_sum / smoothed[:, None], cluster_size=cluster_size,
                       embed_sum=embed_sum)


def track_usage(state: CodebookState, counts: jax.Array, decay: float) -> CodebookState:
  """EMA of code counts only (for a codebook learned by its loss term, so that dead codes
  can still be detected)."""
  return state.replace(cluster_size=decay * state.cluster_size + (1.0 - decay) * counts)


def restart_dead_codes(state: CodebookState, z_e: jax.Array, key: jax.Array, *,
                       threshold: float, axis_name: str | None = None
                       ) -> tuple[CodebookState, jax.Array]:
  """Replaces every code whose EMA count is below `threshold` by an encoder output drawn at
  random from the (global) batch (Dhariwal et al. 2020, Jukebox, section 3.1). A restarted
  code's statistics restart at count `threshold`, as if it had just been used that often.

  The draw depends only on `key` and the global batch, so every device picks the same
  vectors (under pmap the batch is all-gathered over `axis_name` first).

  Args:
    state: the codebook.
    z_e: encoder outputs [..., D].
    key: PRNG key (the same on every device).
    threshold: EMA count under which a code is dead (<= 0 disables restarts).
    axis_name: pmap axis, or None.
  Returns:
    (new state, number of restarted codes [] int32).
  """
  k, d = state.embedding.shape
  flat = jax.lax.stop_gradient(z_e).reshape(-1, d)
  if axis_name is not None:
    flat = jax.lax.all_gather(flat, axis_name, tiled=True)
  dead = state.cluster_size < threshold  # [K]
  pick = jax.random.randint(key, (k,), 0, flat.shape[0])
  fresh = jnp.take(flat, pick, axis=0)  # [K, D]
  t = jnp.float32(max(threshold, 0.0))
  new = CodebookState(
      embedding=jnp.where(dead[:, None], fresh, state.embedding),
      cluster_size=jnp.where(dead, t, state.cluster_size),
      embed_sum=jnp.where(dead[:, None], fresh * t, state.embed_sum))
  return new, jnp.sum(dead.astype(jnp.int32))
