r"""Per-sample score functions :math:`s_i = \nabla_\theta \log p_\theta(x_i)`.

These materialise one gradient per sample (``N x P`` numbers). The Fisher operators in
:mod:`npgjax.fisher` never need them; they are here for dense checks, small models,
eNAC-style regressions, and for users who ask for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from npgjax._tree import check_log_probs

Array = jax.Array
PyTree = Any
LogProbFn = Callable[[PyTree, PyTree], Array]

__all__ = ["num_samples", "per_sample_scores", "score_matrix"]


def num_samples(log_prob_fn: LogProbFn, params: PyTree, batch: PyTree, where: str) -> int:
    """N for ``log_prob_fn(params, batch) -> [N]``, checked against the batch's leaves."""
    out = jax.eval_shape(log_prob_fn, params, batch)
    n = check_log_probs(out, where)
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != n:
            raise ValueError(
                f"{where}: batch leaf {jax.tree_util.keystr(path)} has shape {shape}, but "
                f"log_prob_fn returns {n} samples; every batch leaf needs leading axis {n}."
            )
    return n


def per_sample_scores(
    log_prob_fn: LogProbFn,
    params: PyTree,
    batch: PyTree,
    *,
    chunk_size: int | None = None,
) -> PyTree:
    r"""Per-sample gradients of the log-probabilities, by ``jax.vmap`` of ``jax.grad``.

    .. math::
        s_i = \nabla_\theta \log p_\theta(x_i), \qquad i = 1..N

    Each sample is passed to ``log_prob_fn`` as a batch of one, so ``log_prob_fn`` only
    needs to handle batches. With ``chunk_size`` the samples are processed
    ``chunk_size`` at a time in a ``lax.map`` loop, which caps the memory of the
    intermediate activations at that many samples.

    Args:
      log_prob_fn: ``log_prob_fn(params, batch) -> [N]``; every leaf of ``batch`` has
        leading axis ``N``.
      params: parameter pytree.
      batch: batch pytree.
      chunk_size: optional number of samples per chunk.

    Returns:
      A pytree like ``params`` whose leaves have an extra leading axis ``N``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import per_sample_scores
      >>> fn = lambda w, b: -0.5 * (b["x"] @ w) ** 2
      >>> per_sample_scores(fn, jnp.ones(2), {"x": jnp.eye(2)})
      Array([[-1., -0.],
             [-0., -1.]], dtype=float32)
    """
    n = num_samples(log_prob_fn, params, batch, "per_sample_scores")

    def single(p, sample):
        return log_prob_fn(p, jax.tree.map(lambda x: x[None], sample))[0]

    grad_all = jax.vmap(jax.grad(single), in_axes=(None, 0))
    if chunk_size is None or chunk_size >= n:
        return grad_all(params, batch)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n

    def to_chunks(x):
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape((n_chunks, chunk_size, *x.shape[1:]))

    chunks = jax.tree.map(to_chunks, batch)
    out = jax.lax.map(lambda c: grad_all(params, c), chunks)
    return jax.tree.map(lambda x: x.reshape((n_chunks * chunk_size, *x.shape[2:]))[:n], out)


def score_matrix(
    log_prob_fn: LogProbFn,
    params: PyTree,
    batch: PyTree,
    *,
    chunk_size: int | None = None,
) -> Array:
    """The ``[N, P]`` score (Jacobian) matrix, columns in ``ravel_pytree(params)`` order.

    Args:
      log_prob_fn: ``log_prob_fn(params, batch) -> [N]``.
      params: parameter pytree.
      batch: batch pytree.
      chunk_size: optional chunk size, as in :func:`per_sample_scores`.

    Returns:
      ``S`` with ``S[i] = ravel(grad log p(x_i))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import score_matrix
      >>> score_matrix(lambda w, b: b @ w, jnp.ones(3), jnp.ones((4, 3))).shape
      (4, 3)
    """
    scores = per_sample_scores(log_prob_fn, params, batch, chunk_size=chunk_size)
    return jax.vmap(lambda s: ravel_pytree(s)[0])(scores)
