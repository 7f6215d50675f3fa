"""Pytree linear algebra and input checks shared by every layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any
Array = jax.Array


def tree_vdot(a: PyTree, b: PyTree) -> Array:
    """Inner product of two pytrees with the same structure.

    Args:
      a: a pytree of arrays.
      b: a pytree with the same structure and shapes.

    Returns:
      The scalar sum over leaves of ``vdot(a_leaf, b_leaf)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import tree_vdot
      >>> float(tree_vdot({"w": jnp.ones(2), "b": 2.0}, {"w": jnp.ones(2), "b": 3.0}))
      8.0
    """
    leaves = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return sum(leaves, jnp.zeros((), jnp.result_type(*leaves) if leaves else jnp.float32))


def tree_norm(a: PyTree) -> Array:
    """Euclidean norm of a pytree."""
    return jnp.sqrt(tree_vdot(a, a))


def tree_scale(s: Array | float, a: PyTree) -> PyTree:
    return jax.tree.map(lambda x: (s * x).astype(x.dtype), a)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, a, b)


def tree_axpy(alpha: Array | float, x: PyTree, y: PyTree) -> PyTree:
    """alpha * x + y."""
    return jax.tree.map(lambda a, b: (alpha * a + b).astype(b.dtype), x, y)


def tree_zeros_like(a: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, a)


def tree_all_finite(a: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(a)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def tree_where(cond: Array, a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def materialize(matvec: Callable[[PyTree], PyTree], like: PyTree) -> Array:
    """Dense P x P matrix of a linear pytree map, in `ravel_pytree` order.

    Args:
      matvec: linear function from pytrees shaped like ``like`` to the same.
      like: an example pytree (e.g. the parameters).

    Returns:
      ``M`` with ``M @ ravel(v) == ravel(matvec(v))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import materialize
      >>> materialize(lambda v: {"a": 2 * v["a"]}, {"a": jnp.zeros(2)})
      Array([[2., 0.],
             [0., 2.]], dtype=float32)
    """
    flat, unravel = ravel_pytree(like)
    eye = jnp.eye(flat.size, dtype=flat.dtype)
    cols = jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0])(eye)
    return cols.T


# ---------------------------------------------------------------- checks


def check_same_structure(a: PyTree, b: PyTree, a_name: str, b_name: str) -> None:
    """Raise a ValueError naming the mismatch if a and b differ in structure or shapes."""
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(
            f"pytree mismatch: {a_name} has structure {ta} but {b_name} has structure {tb}."
        )
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"shape mismatch at {jax.tree_util.keystr(path)}: {a_name} has shape "
                f"{jnp.shape(x)} but {b_name} has shape {jnp.shape(y)}."
            )


def is_concrete(x: Any) -> bool:
    """True when x is a Python number or a concrete (non-traced) array.

    A concrete array captured inside ``jit`` or ``lax.scan`` is concrete too: read it
    with NumPy (:func:`host_array`), never with ``jnp`` (which would trace it).
    """
    if isinstance(x, (int, float)):
        return True
    try:
        return not isinstance(x, jax.core.Tracer)
    except AttributeError:  # pragma: no cover
        return False


def host_array(x: Any) -> np.ndarray | None:
    """x as a NumPy array when it is concrete, else None (a tracer is never read)."""
    if x is None or not is_concrete(x):
        return None
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - an exotic leaf that cannot be read on the host
        return None


def check_positive(x: Any, name: str, allow_zero: bool = False) -> None:
    """Raise if a concrete hyperparameter is not positive and finite (traced values pass)."""
    host = host_array(x)
    if host is None or host.size != 1:
        return
    v = float(host.reshape(()))
    bad = (v < 0) if allow_zero else (v <= 0)
    if bad or not np.isfinite(v):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be finite and {need}, got {v}.")


def check_all_finite(tree: PyTree, name: str) -> None:
    """Raise naming the leaf if a concrete float leaf has a NaN or inf (tracers pass)."""
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        host = host_array(x)
        if host is None or not np.issubdtype(host.dtype, np.inexact):
            continue
        if not np.all(np.isfinite(host)):
            raise ValueError(
                f"{name} has a NaN or infinite value at {jax.tree_util.keystr(path)}."
            )


def check_state(state: Any, cls: type, where: str) -> None:
    """Raise a clear error when ``update`` gets something other than ``init``'s state."""
    if not isinstance(state, cls):
        raise ValueError(
            f"{where}: update got a state of type {type(state).__name__}, not "
            f"{cls.__name__}; call state = tx.init(params) first and pass it to tx.update."
        )


def check_log_probs(logp: Any, where: str) -> int:
    """Check a log_prob_fn output is a rank-1 float array and return N."""
    shape = jnp.shape(logp)
    if len(shape) != 1:
        raise ValueError(
            f"{where}: log_prob_fn(params, batch) must return per-sample log-probabilities "
            f"of shape [N]; got shape {shape}."
        )
    return shape[0]


def check_mask(mask: Any, shape: tuple[int, ...], where: str) -> None:
    """Check a sample mask's shape and, when concrete, that it is finite and >= 0."""
    if mask is None:
        return
    if jnp.shape(mask) != tuple(shape):
        raise ValueError(
            f"{where}: mask has shape {jnp.shape(mask)} but the samples have shape {tuple(shape)}."
        )
    host = host_array(mask)
    if host is not None and host.size:
        m = host.astype(np.float64)
        if not np.all(np.isfinite(m)) or np.any(m < 0):
            raise ValueError(
                f"{where}: mask weights must be finite and non-negative; got min {m.min()}, "
                f"max {m.max()}."
            )


def mask_is_valid(mask: Any) -> Array:
    """Traced check: every mask weight finite and non-negative (True for no mask)."""
    if mask is None:
        return jnp.asarray(True)
    m = jnp.asarray(mask)
    if not jnp.issubdtype(m.dtype, jnp.inexact):
        return jnp.all(m >= 0)
    return jnp.all(jnp.isfinite(m) & (m >= 0))


# ---------------------------------------------------------------- devices

AxisName = Any  # a mesh or pmap axis name, or a tuple of them


def _axis_names(axis_name: AxisName) -> tuple[Any, ...]:
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def check_axis_name(axis_name: AxisName, where: str) -> int:
    """Size of a bound ``axis_name`` (1 for None); a ValueError naming it when unbound."""
    if axis_name is None:
        return 1
    size = getattr(jax.lax, "axis_size", None)  # jax < 0.6: psum(1) is the size
    try:
        return size(axis_name) if size else jax.lax.psum(1, axis_name)
    except NameError as e:
        raise ValueError(
            f"{where}: axis_name={axis_name!r} is not bound here. Call it inside jax.shard_map "
            "or jax.pmap over that axis; under plain jax.jit with sharded inputs "
            "(NamedSharding) pass axis_name=None, XLA inserts the reductions itself."
        ) from e


def axis_psum(tree: PyTree, axis_name: AxisName) -> PyTree:
    """Sum over the devices of ``axis_name`` (the identity for None)."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def axis_pmean(tree: PyTree, axis_name: AxisName) -> PyTree:
    """Mean over the devices of ``axis_name`` (the identity for None)."""
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def axis_all(flag: Array, axis_name: AxisName) -> Array:
    """True where ``flag`` holds on every device of ``axis_name``."""
    if axis_name is None:
        return flag
    return jax.lax.psum(jnp.logical_not(flag).astype(jnp.int32), axis_name) == 0


def varying_axes(x: Any) -> frozenset:
    """The manual axes ``x`` varies over inside ``shard_map`` (empty when unknown)."""
    try:
        aval = jax.typeof(x)
    except Exception:  # pragma: no cover - older jax without typeof
        return frozenset()
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", frozenset()))


def vary(tree: PyTree, axis_name: AxisName) -> PyTree:
    """Mark ``tree`` as varying over ``axis_name``, so a vjp at it stays per device.

    Under ``shard_map`` (``check_vma``) the transpose of a replicated input is a ``psum``;
    linearising at ``vary(params)`` keeps each product local, and an explicit
    :func:`axis_psum` then reduces it alike under ``shard_map`` and ``pmap``.
    """
    if axis_name is None:
        return tree
    cast = getattr(jax.lax, "pcast", None)
    if cast is not None:
        def fn(x, ax):
            return cast(x, ax, to="varying")
    else:  # pragma: no cover - jax between 0.6 and 0.10, or before varying types
        fn = getattr(jax.lax, "pvary", None)
        if fn is None:
            return tree
    names = _axis_names(axis_name)

    def one(x: Any) -> Any:
        missing = tuple(n for n in names if n not in varying_axes(x))
        return fn(x, missing) if missing else x

    return jax.tree.map(one, tree)


def gather_rows(x: Array, axis_name: AxisName) -> Array:
    """Concatenate every device's ``x`` along axis 0 (a ``psum``, so unvarying)."""
    size, idx = check_axis_name(axis_name, "gather_rows"), jax.lax.axis_index(axis_name)
    n = x.shape[0]
    full = jnp.zeros((size * n,) + x.shape[1:], x.dtype)
    return jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(full, x, idx * n, 0), axis_name)


def check_divisible(batch: PyTree, num_shards: int, where: str) -> None:
    """Raise naming the leaf when a batch's leading axis does not split over ``num_shards``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = jnp.shape(leaf)
        if not shape or shape[0] % num_shards:
            raise ValueError(
                f"{where}: batch leaf {jax.tree_util.keystr(path)} has shape {shape}; its "
                f"leading (sample) axis must divide evenly over {num_shards} devices. Pad the "
                "batch with masked samples or change the number of devices."
            )


def sample_weights(
    mask: Array | None, shape: tuple[int, ...], dtype: Any, axis_name: AxisName = None
) -> Array:
    """Weights 1/N (or mask/sum(mask)) for averaging over samples, over all devices."""
    if mask is None:
        n = check_axis_name(axis_name, "sample_weights")
        for s in shape:
            n *= s
        return jnp.full(shape, 1.0 / jnp.maximum(n, 1), dtype)
    m = jnp.asarray(mask, dtype)
    return m / jnp.maximum(axis_psum(jnp.sum(m), axis_name), 1.0)
