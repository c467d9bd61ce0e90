"""Per-structure failure checks of a relaxation: failure codes and the atom-overlap test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from crystal_search.crystals import Crystals, cell_heights

#: Failure codes (index) and their reason strings; 0 means no failure.  ``capacity``: the force
#: field's neighbour capacity still overflowed after ``max_retries`` growths (set by the driver).
FAILURE_REASONS: tuple[str | None, ...] = (
  None,
  "nan",
  "volume",
  "overlap",
  "cell_collapse",
  "capacity",
)
_NAN, _VOLUME, _OVERLAP, _COLLAPSE, _CAPACITY = 1, 2, 3, 4, 5

#: Å, covalent radius by atomic number (``ase.data.covalent_radii``; index 0 unused).
_COVALENT_RADII = np.asarray(covalent_radii, np.float32)
_IMAGE_SHIFTS = np.array(
  [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], np.float32
)


def pair_distances(crystals: Crystals, *, all_images: bool = True) -> jax.Array:
  """``[B, N, N]`` Å: distance between atoms i and j, ``inf`` on the diagonal and for padding.

  The wrapped fractional difference (in ``[-0.5, 0.5)``) is the closest image for every pair
  closer than half the cell's smallest face-to-face height; with ``all_images`` the 27 images
  next to it are searched too (27 times the work), exact below the smallest cell height.
  """
  f = crystals.positions
  df = f[:, None, :, :] - f[:, :, None, :]
  df = df - jnp.round(df)
  shifts = _IMAGE_SHIFTS if all_images else np.zeros((1, 3), np.float32)
  r2 = jnp.full(df.shape[:-1], jnp.inf, df.dtype)
  for shift in shifts:  # fused N x N passes, no [B, N, N, 27, 3] array
    d = jnp.einsum("bijk,bkl->bijl", df + shift, crystals.lattice)
    r2 = jnp.minimum(r2, jnp.sum(d * d, axis=-1))
  n = crystals.max_atoms
  pair = crystals.mask[:, :, None] & crystals.mask[:, None, :] & ~jnp.eye(n, dtype=bool)
  return jnp.sqrt(jnp.where(pair, r2, jnp.inf))


def overlap_ratio(
  crystals: Crystals, *, min_distance: float = 0.5, overlap_fraction: float = 0.5
) -> jax.Array:
  """``[B]``: smallest ratio of a pair distance to its overlap threshold ``max(min_distance,
  overlap_fraction * (r_i + r_j))`` (covalent radii ``r``, Å); below 1 is an overlap.

  Jittable.  The 27-image search of :func:`pair_distances` runs (``lax.cond``) only when some
  cell of the batch is thinner than twice the batch's largest threshold; otherwise the
  wrapped difference is exact for every pair that could overlap.
  """
  radii = jnp.asarray(_COVALENT_RADII, crystals.positions.dtype)[crystals.atomic_numbers]
  radii = jnp.where(crystals.mask, radii, 0.0)
  threshold = jnp.maximum(overlap_fraction * (radii[:, :, None] + radii[:, None, :]), min_distance)
  threshold = jnp.maximum(threshold, 1e-12)  # min_distance = overlap_fraction = 0: never
  real = crystals.n_atoms > 0
  heights = jnp.where(real, jnp.min(cell_heights(crystals.lattice), axis=-1), jnp.inf)
  thin = jnp.any(heights < 2 * jnp.max(threshold))
  distances = jax.lax.cond(
    thin,
    lambda c: pair_distances(c, all_images=True),
    lambda c: pair_distances(c, all_images=False),
    crystals,
  )
  return jnp.min(distances / threshold, axis=(-1, -2))
