"""The energy baseline (paper section 3.3): MEGNet trunk, set2set readout, energy per cell.

After the blocks, the real node states and the real edge states are each
pooled with set2set, joined with the global state and passed through the MLP
``head_widths`` (64 -> 32) and a linear output.  The output is the
*standardised energy per atom*::

  energy [eV / cell] = n_atoms * (output * energy_std + energy_mean)

with ``variables['normalization'] = {'energy_mean', 'energy_std'}`` (scalars,
eV/atom).  The graph has no fictitious nodes.

Forces and stress come from :func:`energy_forces_stress`: by central finite
differences (the paper's way: ``config.energy.fd_step`` Å on every Cartesian
atom coordinate, ``config.energy.fd_strain`` on the 6 symmetric strain
components, fractional coordinates fixed) or by autodiff
(:func:`crystal_search.force_fields.base.cartesian_gradients`).  Stress is
``(1/V) dE/dstrain`` in kBar (tensile positive).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import ml_collections
from flax import struct

from crystal_search import graphs
from crystal_search.crystals import Crystals
from crystal_search.force_fields.base import cartesian_gradients
from crystal_search.models import megnet
from crystal_search.models.config import validate_config
from crystal_search.units import EV_PER_A3_TO_KBAR


@struct.dataclass
class EnergyPrediction:
  """Energy network outputs for ``B`` structures.

  Attributes:
    energy: ``[B]`` eV per cell (0 for padding structures).
    energy_normalized: ``[B]`` standardised energy per atom.
    overflow: ``[B]`` bool, neighbour capacity or image range too small.
  """

  energy: jax.Array
  energy_normalized: jax.Array
  overflow: jax.Array


class EnergyNet(nn.Module):
  """Graph -> standardised energy per atom ``[B]``."""

  elements: tuple[str, ...]
  embed_dim: int = 16
  num_blocks: int = 7
  width: int = 64
  head_widths: tuple[int, ...] = (64, 32)
  act: str = "softplus"
  set2set_steps: int = 3
  edge_inputs: str = "vector"
  cutoff: float = 4.0
  vector_channels: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
    v, e, u, *_ = megnet.MEGNet(
      self.elements,
      self.embed_dim,
      self.num_blocks,
      self.width,
      self.act,
      num_fictitious=0,
      edge_inputs=self.edge_inputs,
      cutoff=self.cutoff,
      vector_channels=self.vector_channels,
      dtype=self.dtype,
    )(graph)
    pooled = megnet.set2set_readout(v, e, graph, steps=self.set2set_steps, dtype=self.dtype)
    hidden = megnet.MLP(self.head_widths, self.act, dtype=self.dtype)(
      jnp.concatenate([pooled, u], axis=-1)
    )
    return nn.Dense(1, dtype=self.dtype, param_dtype=self.dtype)(hidden)[:, 0]


def network(config: ml_collections.ConfigDict) -> EnergyNet:
  """The flax module for ``config``."""
  return EnergyNet(**megnet.module_kwargs(config))


def make_graph(
  config: ml_collections.ConfigDict, crystals: Crystals, *, capacity: int
) -> tuple[jraph.GraphsTuple, jax.Array]:
  """The energy model's graph (no fictitious nodes) and overflow ``[B]``."""
  return megnet.model_graph(config, crystals, capacity=capacity, fictitious=None)


def init(config: ml_collections.ConfigDict, rng: jax.Array, crystals: Crystals) -> dict:
  """Random parameters, normalisation mean 0 / std 1: ``{'params', 'normalization'}``."""
  validate_config(config)
  params = megnet.init_params(network(config), make_graph, config, rng, crystals)
  dtype = jnp.dtype(config.dtype)
  return {
    "params": params,
    "normalization": {"energy_mean": jnp.zeros((), dtype), "energy_std": jnp.ones((), dtype)},
  }


def set_normalization(variables: dict, *, energy_mean, energy_std) -> dict:
  """A copy with new statistics: ``energy_mean``, ``energy_std`` scalars in eV/atom."""
  dtype = variables["normalization"]["energy_mean"].dtype
  if not float(energy_std) > 0:
    raise ValueError("energy_std must be > 0")
  norm = {
    "energy_mean": jnp.asarray(energy_mean, dtype),
    "energy_std": jnp.asarray(energy_std, dtype),
  }
  return {**variables, "normalization": norm}


def apply(
  config: ml_collections.ConfigDict, variables: dict, crystals: Crystals, *, capacity: int
) -> EnergyPrediction:
  """Energies of a batch (pure JAX; ``capacity`` static edges per structure)."""
  graph, overflow = make_graph(config, crystals, capacity=capacity)
  out = network(config).apply({"params": variables["params"]}, graph)
  n = variables["normalization"]
  n_atoms = jnp.asarray(crystals.n_atoms).astype(out.dtype)
  energy = n_atoms * (out * n["energy_std"] + n["energy_mean"])
  return EnergyPrediction(energy=energy, energy_normalized=out, overflow=overflow)


def _strain_basis(dtype) -> jax.Array:
  """The 6 symmetric unit strains ``[6, 3, 3]`` (xx, yy, zz, yz, xz, xy; off-diagonals 1/2)."""
  basis = []
  for i, j in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)):
    m = jnp.zeros((3, 3), dtype).at[i, j].add(0.5).at[j, i].add(0.5)
    basis.append(m)
  return jnp.stack(basis)


def finite_difference_forces_stress(
  energy_fn,
  crystals: Crystals,
  *,
  step: float,
  strain: float,
  chunk: int = 64,
) -> tuple[jax.Array, jax.Array]:
  """Central finite differences of an energy function (jittable).

  Args:
    energy_fn: batch -> energies ``[B]`` eV (must accept any batch size).
    crystals: ``B`` structures, ``N`` slots.
    step: Cartesian displacement, Å.
    strain: strain step (dimensionless); the lattice becomes ``L (1 + eps)``
      with symmetric ``eps``, fractional coordinates fixed.
    chunk: structures evaluated at once (displaced copies x B).

  Returns:
    ``forces [B, N, 3]`` eV/Å (``-dE/dr``) and ``stress [B, 3, 3]`` kBar
    (``(1/V) dE/deps``), zero on padding.
  """
  b, n = crystals.atomic_numbers.shape
  dtype = crystals.positions.dtype
  positions = jnp.asarray(crystals.positions)
  lattice = jnp.asarray(crystals.lattice)
  inv = jnp.swapaxes(graphs.reciprocal_rows(lattice), -1, -2)  # inv(lattice), [B, 3, 3]
  # Displacements: 6N atom moves (atom a, axis d, sign) then 12 strains.
  n_moves = 3 * n
  k_total = 2 * n_moves + 12
  copies = max(1, chunk // b)
  n_chunks = -(-k_total // copies)
  k_padded = n_chunks * copies
  ks = jnp.arange(k_padded)

  def displaced(k):
    is_move = k < 2 * n_moves
    move = jnp.minimum(k, 2 * n_moves - 1)
    sign_m = jnp.where(move % 2 == 0, 1.0, -1.0).astype(dtype)
    atom, axis = (move // 2) // 3, (move // 2) % 3
    cart = jnp.zeros((n, 3), dtype).at[atom, axis].set(sign_m * step)
    d_frac = jnp.einsum("nj,bjk->bnk", cart, inv)  # [B, N, 3]
    s = jnp.clip(k - 2 * n_moves, 0, 11)
    sign_s = jnp.where(s % 2 == 0, 1.0, -1.0).astype(dtype)
    eps = _strain_basis(dtype)[s // 2] * sign_s * strain
    new_pos = jnp.where(is_move, positions + d_frac, positions)
    new_lat = jnp.where(is_move, lattice, lattice @ (jnp.eye(3, dtype=dtype) + eps))
    return new_pos, new_lat

  pos_all, lat_all = jax.vmap(displaced)(ks)  # [K, B, N, 3], [K, B, 3, 3]
  tile = lambda x: jnp.broadcast_to(x, (k_padded,) + x.shape)

  def chunk_energy(args):
    p, lat = args  # [copies, B, ...]
    batch = Crystals(
      positions=p.reshape(copies * b, n, 3),
      lattice=lat.reshape(copies * b, 3, 3),
      atomic_numbers=tile(crystals.atomic_numbers)[:copies].reshape(copies * b, n),
      mask=tile(crystals.mask)[:copies].reshape(copies * b, n),
      n_atoms=tile(crystals.n_atoms)[:copies].reshape(copies * b),
    )
    return energy_fn(batch).reshape(copies, b)

  energies = jax.lax.map(
    chunk_energy,
    (
      pos_all.reshape(n_chunks, copies, b, n, 3),
      lat_all.reshape(n_chunks, copies, b, 3, 3),
    ),
  ).reshape(k_padded, b)
  moves = energies[: 2 * n_moves].reshape(n, 3, 2, b)
  forces = -(moves[:, :, 0] - moves[:, :, 1]) / (2 * step)  # [N, 3, B]
  forces = jnp.moveaxis(forces, -1, 0) * jnp.asarray(crystals.mask)[..., None]
  strains = energies[2 * n_moves : 2 * n_moves + 12].reshape(6, 2, b)
  d_eps = (strains[:, 0] - strains[:, 1]) / (2 * strain)  # [6, B]
  d_eps = jnp.moveaxis(d_eps, -1, 0)
  xx, yy, zz, yz, xz, xy = (d_eps[:, k] for k in range(6))
  rows = [jnp.stack(r, axis=-1) for r in ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))]
  volume = jnp.abs(jnp.sum(lattice[:, 0] * jnp.cross(lattice[:, 1], lattice[:, 2]), axis=-1))
  stress = jnp.stack(rows, axis=-2) / volume[:, None, None] * EV_PER_A3_TO_KBAR
  stress = stress * (jnp.asarray(crystals.n_atoms) > 0)[:, None, None]
  return forces, stress


def energy_forces_stress(
  config: ml_collections.ConfigDict,
  variables: dict,
  crystals: Crystals,
  *,
  capacity: int,
  derivative: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Energy ``[B]`` eV, forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar, overflow ``[B]``.

  Args:
    derivative: ``'fd'`` (central finite differences with ``config.energy``
      steps) or ``'autodiff'``; None takes ``config.energy.derivative``.
  """
  derivative = derivative or config.energy.derivative
  crystals = megnet.cast_crystals(config, crystals)
  pred = apply(config, variables, crystals, capacity=capacity)
  energy_fn = lambda c: apply(config, variables, c, capacity=capacity).energy
  if derivative == "autodiff":
    _, forces, stress = cartesian_gradients(energy_fn, crystals)
  elif derivative == "fd":
    forces, stress = finite_difference_forces_stress(
      energy_fn,
      crystals,
      step=float(config.energy.fd_step),
      strain=float(config.energy.fd_strain),
      chunk=int(config.energy.fd_chunk),
    )
  else:
    raise ValueError(f"derivative must be 'fd' or 'autodiff', got {derivative!r}")
  return pred.energy, forces, stress, pred.overflow


__all__ = [
  "EnergyPrediction",
  "EnergyNet",
  "apply",
  "energy_forces_stress",
  "finite_difference_forces_stress",
  "init",
  "network",
  "set_normalization",
]
