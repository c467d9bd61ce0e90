"""The host API :func:`relax_structures`: size buckets, batch sizes from a memory budget,
chunked jit-compiled while loops, in-flight refills, compaction, overflow retries, sharding.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as crystals_lib
from crystal_search.crystals import Crystals
from crystal_search.errors import InputError
from crystal_search.relax.checks import _CAPACITY, FAILURE_REASONS
from crystal_search.relax.config import DynamicsParams, make_config
from crystal_search.relax.dynamics import _host_eval, move, observe
from crystal_search.relax.state import (
  _written,
  active,
  empty_trajectory,
  fresh_state,
  lbfgs_memory,
  record,
)


def _chunk_fn(force_field, params: DynamicsParams, chunk_steps: int, every: int):
  """``(state, traj, refill_at) -> (state, traj, iterations)``: up to ``chunk_steps`` steps in
  one jit, ending early once ``refill_at`` (an int32 scalar) structures have finished in it, so
  that their slots are refilled without idling to the chunk's end."""

  def step(state, traj):
    moved = move(state, params)
    after = observe(moved, force_field(moved.crystals), params)
    if every:
      traj = record(traj, after, _written(moved, after), every)
    return after, traj

  def working(s):
    return active(s, params) | s.fresh

  def run(state, traj, refill_at):
    idle0 = jnp.sum(~working(state))

    def cond(carry):
      s, _, it = carry
      w = working(s)
      room = jnp.sum(~w) - idle0 < refill_at
      return (it < chunk_steps) & jnp.any(w) & room & ~jnp.any(s.overflow)

    def body(carry):
      s, tr, it = carry
      s, tr = step(s, tr)
      return s, tr, it + 1

    return jax.lax.while_loop(cond, body, (state, traj, jnp.int32(0)))

  return jax.jit(run)


_RUNNER_CACHE: dict = {}
_RUNNER_CACHE_SIZE = 32


def _make_runner(force_field, params: DynamicsParams, chunk: int, every: int):
  """A chunk runner, shared between calls when the force field is hashable (no recompiles)."""
  make = _chunk_fn if getattr(force_field, "jittable", False) else _HostChunk
  try:
    key = (force_field, params, chunk, every)
    hash(key)
  except TypeError:  # e.g. a model holding its weights: cache by identity (kept alive below).
    key = (("id", id(force_field)), params, chunk, every)
  if key not in _RUNNER_CACHE:
    if len(_RUNNER_CACHE) >= _RUNNER_CACHE_SIZE:
      _RUNNER_CACHE.pop(next(iter(_RUNNER_CACHE)))
    _RUNNER_CACHE[key] = (make(force_field, params, chunk, every), force_field)
  return _RUNNER_CACHE[key][0]


class _HostChunk:
  """Python-loop twin of :func:`_chunk_fn` for host force fields (same jitted update)."""

  def __init__(self, force_field, params: DynamicsParams, chunk_steps: int, every: int):
    self.force_field = force_field
    self.params = params
    self.chunk_steps = chunk_steps
    self.every = every
    self.move = jax.jit(move, static_argnums=1)
    self.observe = jax.jit(observe, static_argnums=2)
    self.record = jax.jit(record, static_argnums=3)

  def _cache_size(self) -> int:
    return self.move._cache_size() + self.observe._cache_size() + self.record._cache_size()

  def _working(self, state) -> np.ndarray:
    return np.asarray(active(state, self.params) | state.fresh)

  def __call__(self, state, traj, refill_at):
    it = 0
    state = jax.tree_util.tree_map(jnp.asarray, state)
    idle0 = int(np.sum(~self._working(state)))
    while it < self.chunk_steps:
      working = self._working(state)
      if not working.any() or int(np.sum(~working)) - idle0 >= int(refill_at):
        break
      if bool(np.any(np.asarray(state.overflow))):
        break
      moved = self.move(state, self.params)
      out = _host_eval(self.force_field, moved)
      after = self.observe(moved, out, self.params)
      if self.every:
        traj = self.record(traj, after, _written(moved, after), self.every)
      state = after
      it += 1
    return state, traj, it


@dataclasses.dataclass
class RelaxResult:
  """One relaxed structure.

  Attributes:
    final: the relaxed structure (for a failed one: its last good configuration).
    converged: reached ``fmax``/``smax``.
    failed: stopped by a failure (see ``failure_reason``).
    failure_reason: ``"nan" | "volume" | "overlap" | "cell_collapse"`` or None.
    steps: position updates done.
    energy: eV per cell at ``final`` (NaN if the force field gives none).
    forces: ``[n, 3]`` eV/Å at ``final``.
    stress: ``[3, 3]`` kBar at ``final``.
    trajectory: None, or kept steps: ``positions [T, n, 3]`` fractional,
      ``lattice [T, 3, 3]`` Å, ``forces [T, n, 3]`` eV/Å, ``stress [T, 3, 3]``
      kBar, ``energy [T]`` eV, ``step [T]`` int.
  """

  final: Structure
  converged: bool
  failed: bool
  failure_reason: str | None
  steps: int
  energy: float
  forces: np.ndarray
  stress: np.ndarray
  trajectory: dict[str, np.ndarray] | None = None

  @property
  def max_force(self) -> float:
    """eV/Å, largest atomic force norm at ``final``."""
    return float(np.max(np.linalg.norm(self.forces, axis=-1))) if len(self.forces) else 0.0

  @property
  def max_stress(self) -> float:
    """kBar, largest absolute stress component at ``final``."""
    return float(np.max(np.abs(self.stress)))


def bytes_per_structure(n_atoms: int, force_field, *, trajectory_frames: int = 0) -> int:
  """Estimated memory of one structure slot of ``n_atoms`` atom slots (bytes).

  The force field's share is ``force_field.bytes_per_structure(n_atoms)`` when it
  defines one; otherwise ``edges * EDGE_BYTES`` with ``edges`` its ``capacity``
  attribute (neighbour edges per structure, as in ``ModelForceField``), or
  ``n_atoms * max_neighbors`` (default 64 neighbours per atom).  The relaxation
  state (~8 ``[N, 3]`` arrays) and the trajectory buffers (``[T, N, 3]`` positions
  and forces, float32) are added.
  """
  fn = getattr(force_field, "bytes_per_structure", None)
  if callable(fn):
    model = int(fn(n_atoms))
  else:
    edges = getattr(force_field, "capacity", None)
    if not isinstance(edges, int) or edges <= 0:
      edges = int(n_atoms) * int(getattr(force_field, "max_neighbors", 64))
    model = int(edges) * EDGE_BYTES
  state = (8 * n_atoms * 3 + 8 * 9) * 4
  traj = trajectory_frames * (2 * n_atoms * 3 + 2 * 9 + 1) * 4
  return model + state + traj


#: Working memory per neighbour edge: a width-64 float32 edge state and a few live
#: intermediates of the message-passing block (2 KiB).
EDGE_BYTES = 2048


def choose_batch_size(
  n_atoms: int,
  force_field,
  *,
  memory_budget_mb: float,
  max_batch_size: int,
  trajectory_frames: int = 0,
  num_devices: int = 1,
) -> int:
  """Batch size from a memory budget, at least one per device, a multiple of ``num_devices``."""
  per = bytes_per_structure(n_atoms, force_field, trajectory_frames=trajectory_frames)
  fit = int(memory_budget_mb * 2**20 * num_devices // max(per, 1))
  b = max(1, min(fit, max_batch_size))
  return int(math.ceil(b / num_devices) * num_devices)


def _max_batch_size(cfg) -> int:
  """``cfg.cpu_max_batch_size`` on CPUs, ``cfg.max_batch_size`` on accelerators."""
  on_cpu = jax.default_backend() == "cpu"
  return int(cfg.cpu_max_batch_size if on_cpu else cfg.max_batch_size)


def _mesh_sharding(num_devices: int):
  """NamedSharding over a 1-D device mesh on the batch axis, or None on one device."""
  if num_devices <= 1:
    return None
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.asarray(jax.local_devices()[:num_devices]), ("batch",))
  return lambda axis, ndim: NamedSharding(
    mesh, PartitionSpec(*([None] * axis + ["batch"] + [None] * (ndim - axis - 1)))
  )


def _load_slots(state, traj, slots: Sequence[int], crystals: Crystals):
  """Put new structures (numpy ``crystals``, one per slot) into numpy ``state``/``traj`` rows."""
  new = fresh_state(crystals, memory=state.lbfgs_s.shape[1])
  idx = np.asarray(slots)
  state = jax.tree_util.tree_map(lambda a, b: _set_rows(a, idx, b), state, new)
  traj = jax.tree_util.tree_map(lambda a: _nan_cols(a, idx), traj)
  return state, traj


def _take_slots(state, traj, slots: Sequence[int]):
  """Numpy ``state``/``traj`` of only the batch rows ``slots``, in that order."""
  idx = np.asarray(slots)
  state = jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], state)
  traj = jax.tree_util.tree_map(lambda a: np.asarray(a)[:, idx], traj)
  return state, traj


def _set_rows(a, idx, b):
  a = np.array(a)
  a[idx] = b
  return a


def _nan_cols(a, idx):
  a = np.array(a)
  a[:, idx] = np.nan
  return a


def _result(state_np, traj_np, slot: int, numbers: np.ndarray, every: int) -> RelaxResult:
  n = len(numbers)
  c = state_np.crystals
  step = int(state_np.step[slot])
  failed = bool(state_np.failed[slot])
  code = int(state_np.failure_code[slot])
  final = Structure(
    Lattice(np.asarray(c.lattice[slot], np.float64)),
    [int(z) for z in numbers],
    np.asarray(c.positions[slot, :n], np.float64) % 1.0,
  )
  trajectory = None
  if every and traj_np is not None:
    t = step // every + 1
    trajectory = {
      "positions": np.asarray(traj_np.positions[:t, slot, :n]),
      "lattice": np.asarray(traj_np.lattice[:t, slot]),
      "forces": np.asarray(traj_np.forces[:t, slot, :n]),
      "stress": np.asarray(traj_np.stress[:t, slot]),
      "energy": np.asarray(traj_np.energy[:t, slot]),
      "step": np.arange(t, dtype=np.int32) * every,
    }
  return RelaxResult(
    final=final,
    converged=bool(state_np.converged[slot]) and not failed,
    failed=failed,
    failure_reason=FAILURE_REASONS[code] if failed else None,
    steps=step,
    energy=float(state_np.energy[slot]),
    forces=np.asarray(state_np.forces[slot, :n], np.float64),
    stress=np.asarray(state_np.stress[slot], np.float64),
    trajectory=trajectory,
  )


def relax_structures(
  structures: Sequence[Structure],
  force_field,
  *,
  config: ml_collections.ConfigDict | dict | None = None,
  batch_size: int | None = None,
  progress: bool = False,
  num_devices: int | None = None,
  stats: dict | None = None,
  **overrides: Any,
) -> list[RelaxResult]:
  """Relax pymatgen structures (positions and cell) with any force field.

  Args:
    structures: the structures (any sizes; bucketed by atom count).
    force_field: a jittable or host force field (see ``force_fields/base.py``).
    config: settings (:func:`get_relax_config` fields); ``overrides`` win over it.
    batch_size: structure slots per batch; default: from ``memory_budget_mb``.
    progress: tqdm bar over finished structures.
    num_devices: local devices to shard the batch over (default: all).
    stats: if given, filled with ``compiles`` (jit compilations in this call), ``chunks``
      (chunk runs), ``retries`` (capacity growths), ``batch_sizes`` (per bucket),
      ``structure_steps`` (force evaluations of real structures), ``slot_steps`` (batch slots
      times loop iterations, padding and finished slots included: the work paid for),
      ``compactions`` (tails moved into a smaller batch), ``host_seconds`` (wall time outside
      the compiled chunks: refills, results, transfers, compilation) and ``force_field`` (the
      force field after any growth).
    **overrides: e.g. ``potim=0.4, smass=2.0, fmax=0.05, smax=5.0, max_steps=300,
      trajectory_every=1``.

  Returns:
    One :class:`RelaxResult` per input structure, in input order.

  Raises:
    InputError: bad settings, or a structure :func:`check_inputs` refuses (no atoms, NaN or
      infinite numbers, an absurd cell, too many atoms, an unsupported element).
  """
  cfg = make_config(config, **overrides)
  structures = list(structures)
  check_inputs(structures, force_field)
  devices = max(1, min(num_devices or jax.local_device_count(), jax.local_device_count()))
  driver = _Driver(force_field, cfg, devices)
  buckets: dict[int, list[int]] = {}
  for k, s in enumerate(structures):
    buckets.setdefault(crystals_lib.bucket_size(len(s)), []).append(k)
  buckets = merge_small_buckets(buckets, int(cfg.min_bucket_structures))
  results: list[RelaxResult | None] = [None] * len(structures)
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(structures), desc="relax", unit="structure")
  t0 = time.perf_counter()
  for width in sorted(buckets):
    order = buckets[width]
    driver.run_bucket(structures, order, width, results, batch_size=batch_size, bar=bar)
  driver.info["host_seconds"] = time.perf_counter() - t0 - driver._device_seconds
  if bar is not None:
    bar.close()
  if stats is not None:
    stats.update(driver.info, force_field=driver.force_field)
  return results  # type: ignore[return-value]


def check_inputs(structures: Sequence[Structure], force_field) -> None:
  """Refuse what no relaxation can start from, before any work: a structure without atoms,
  with NaN or infinite numbers, an absurd cell (:func:`crystal_search.crystals.check_cell`), more
  atoms than the largest bucket, or an element ``force_field`` does not support.

  Raises:
    InputError: one line naming the structure (its index and formula) and the problem.
  """
  elements = getattr(force_field, "elements", None)
  for k, s in enumerate(structures):
    if len(s) == 0:
      raise InputError(f"structure {k}: no atoms")
    name = f"structure {k} ({s.composition.reduced_formula})"
    crystals_lib.check_cell(s, name=name)
    if len(s) > crystals_lib.ATOM_BUCKETS[-1]:
      raise InputError(
        f"{name}: {len(s)} atoms exceeds the largest supported {crystals_lib.ATOM_BUCKETS[-1]}"
      )
    if elements is not None:
      unknown = sorted({sp.symbol for sp in s.species} - set(elements))
      if unknown:
        raise InputError(
          f"{name}: element(s) {', '.join(unknown)} "
          f"not supported by {getattr(force_field, 'name', 'the force field')}"
        )


def merge_small_buckets(buckets: dict[int, list[int]], minimum: int) -> dict[int, list[int]]:
  """``{width: indices}`` with every bucket of fewer than ``minimum`` structures moved into the
  next wider one (the widest keeps what reaches it)."""
  out: dict[int, list[int]] = {}
  carry: list[int] = []
  widths = sorted(buckets)
  for width in widths:
    items = sorted(carry + buckets[width])
    if len(items) < minimum and width != widths[-1]:
      carry = items
    else:
      out[width], carry = items, []
  return out


class _Driver:
  """Runs buckets of structures through chunked, in-flight batches (host side)."""

  def __init__(self, force_field, cfg: ml_collections.ConfigDict, devices: int):
    self.base_force_field = force_field
    self.force_field = force_field
    self.bucket_force_field = force_field
    self.cfg = cfg
    self.params = DynamicsParams.from_config(cfg)
    self.every = int(cfg.trajectory_every)
    self.frames = self.params.max_steps // self.every + 1 if self.every else 1
    self.devices = devices
    self.sharding = _mesh_sharding(devices)
    self.jittable = bool(getattr(force_field, "jittable", False))
    self.runners: dict = {}
    self._device_seconds = 0.0
    self.info = {
      "compiles": 0,
      "chunks": 0,
      "retries": 0,
      "batch_sizes": {},
      "structure_steps": 0,
      "slot_steps": 0,
      "compactions": 0,
      "host_seconds": 0.0,
    }

  def _runner(self, chunk: int):
    key = (id(self.force_field), chunk)
    if key not in self.runners:
      runner = _make_runner(self.force_field, self.params, chunk, self.every)
      # The force field is kept with its runner so that its id() stays unique.
      self.runners[key] = (runner, self.force_field, runner._cache_size())
    return self.runners[key][0]

  def _count_compiles(self) -> None:
    self.info["compiles"] = sum(r._cache_size() - n0 for r, _, n0 in self.runners.values())

  def _put(self, state, traj):
    if self.sharding is None:
      return jax.tree_util.tree_map(jnp.asarray, (state, traj))
    shard = self.sharding
    state = jax.tree_util.tree_map(lambda x: jax.device_put(x, shard(0, np.ndim(x))), state)
    traj = jax.tree_util.tree_map(lambda x: jax.device_put(x, shard(1, np.ndim(x))), traj)
    return state, traj

  def _run_chunk(self, state, traj, chunk: int, refill_at: int):
    """One chunk with overflow retry: ``force_field.grow()`` and rerun from the chunk start."""
    for attempt in range(int(self.cfg.max_retries) + 1):
      dev_state, dev_traj = self._put(state, traj)
      t0 = time.perf_counter()
      dev_state, dev_traj, iterations = self._runner(chunk)(
        dev_state, dev_traj, np.int32(refill_at)
      )
      jax.block_until_ready(dev_state)
      self._device_seconds += time.perf_counter() - t0
      self.info["chunks"] += 1
      self.info["slot_steps"] += int(iterations) * len(np.asarray(state.step))
      self._count_compiles()
      new_state = jax.tree_util.tree_map(np.asarray, dev_state)
      if not np.any(new_state.overflow):
        return new_state, jax.tree_util.tree_map(np.asarray, dev_traj)
      if attempt == int(self.cfg.max_retries):
        break
      grown = self.force_field.grow()
      if not self._affordable(grown, new_state):
        break
      self.info["retries"] += 1
      self.force_field = grown
    return _fail_overflowing(new_state), jax.tree_util.tree_map(np.asarray, dev_traj)

  def _affordable(self, force_field, state) -> bool:
    """Whether a batch like ``state`` still fits in memory with a grown ``force_field``: within
    ``memory_budget_mb`` per device, or within 4 times what the bucket's first force field
    needed.  A capacity that cannot be afforded fails the overflowing structures (``capacity``)
    instead of exhausting memory (cells too thin for the force field's image range)."""
    b, width = np.asarray(state.step).shape[0], np.asarray(state.crystals.positions).shape[1]
    need = b * bytes_per_structure(width, force_field, trajectory_frames=self.frames)
    start = b * bytes_per_structure(width, self.bucket_force_field, trajectory_frames=self.frames)
    return need <= max(self.cfg.memory_budget_mb * 2**20 * self.devices, 4 * start)

  def run_bucket(self, structures, order, width, results, *, batch_size, bar) -> None:
    cfg, params, every = self.cfg, self.params, self.every
    d = self.devices
    sized_for = getattr(self.base_force_field, "sized_for", None)
    if callable(sized_for):  # an edge capacity for this bucket's structures, not the largest's
      bucket = crystals_lib.from_structures([structures[k] for k in order], max_atoms=width)
      self.force_field = sized_for(bucket)
    self.bucket_force_field = self.force_field
    if batch_size is not None:
      b = int(math.ceil(int(batch_size) / d) * d)
    else:
      b = choose_batch_size(
        width,
        self.force_field,
        memory_budget_mb=cfg.memory_budget_mb,
        max_batch_size=_max_batch_size(cfg),
        trajectory_frames=self.frames if every else 0,
        num_devices=d,
      )
    b = min(b, int(math.ceil(len(order) / d) * d))
    if batch_size is None:  # a power of two per device: the same shapes recur between calls
      b = d * (1 << ((b // d).bit_length() - 1))
    self.info["batch_sizes"][width] = b
    in_flight = cfg.in_flight and len(order) > b
    compact = bool(cfg.compact) and self.jittable and b > d and b >= int(cfg.compact_min_batch)
    chunk = int(cfg.chunk_steps) if in_flight or compact else params.max_steps + 1
    queue = deque(order)
    slot_of: list[int | None] = [None] * b

    def empty(n):
      return _padding_crystals(n, width)

    state = jax.tree_util.tree_map(np.asarray, fresh_state(empty(b), memory=lbfgs_memory(params)))
    traj = empty_trajectory(self.frames, b, width)

    def refill(state, traj, free):
      take = []
      while free and queue:
        take.append((free.pop(0), queue.popleft()))
      if take:
        new = crystals_lib.from_structures([structures[k] for _, k in take], max_atoms=width)
        state, traj = _load_slots(state, traj, [s for s, _ in take], new)
        for s, k in take:
          slot_of[s] = k
      return state, traj

    state, traj = refill(state, traj, list(range(b)))
    while any(k is not None for k in slot_of):
      before = np.where(state.fresh, -1, state.step)
      # With structures waiting, end the chunk once a share of the batch has finished.
      refill_at = max(1, math.ceil(b * float(cfg.refill_fraction))) if queue else b + 1
      state, traj = self._run_chunk(state, traj, chunk, refill_at)
      real = state.crystals.n_atoms > 0
      self.info["structure_steps"] += int(np.sum(np.where(real, state.step - before, 0)))
      done = (
        (state.converged | state.failed | (state.step >= params.max_steps)) & ~state.fresh & real
      )
      free = []
      for s in range(b):
        k = slot_of[s]
        if k is None or not done[s]:
          continue
        numbers = np.asarray(structures[k].atomic_numbers)
        results[k] = _result(state, traj if every else None, s, numbers, every)
        slot_of[s] = None
        free.append(s)
        if bar is not None:
          bar.update(1)
      if free:
        # Freed slots become padding (no atoms) unless refilled from the queue.
        state, traj = _load_slots(state, traj, free, empty(len(free)))
        state, traj = refill(state, traj, free)
      if compact and not queue:
        live = [s for s in range(b) if slot_of[s] is not None]
        size = compact_size(len(live), d)
        if live and b >= int(cfg.compact_min_batch) and size * int(cfg.compact_factor) <= b:
          spare = [s for s in range(b) if slot_of[s] is None][: size - len(live)]
          keep = live + spare
          state, traj = _take_slots(state, traj, keep)
          slot_of = [slot_of[s] for s in keep]
          b = size
          self.info["compactions"] += 1


def _fail_overflowing(state):
  """Numpy ``state`` with the structures that still overflow failed as ``"capacity"``, back at
  their last good configuration; the others go on."""
  bad = np.asarray(state.overflow)
  back = (bad & np.asarray(state.moving))[:, None, None]
  c = state.crystals
  return state.replace(
    crystals=c.replace(
      positions=np.where(back, state.previous_positions, c.positions),
      lattice=np.where(back, state.previous_lattice, c.lattice),
    ),
    failed=np.asarray(state.failed) | bad,
    failure_code=np.where(bad, _CAPACITY, state.failure_code).astype(np.int32),
    fresh=np.asarray(state.fresh) & ~bad,
    moving=np.asarray(state.moving) & ~bad,
    overflow=np.zeros_like(bad),
  )


def compact_size(live: int, num_devices: int = 1) -> int:
  """The batch a compacted tail of ``live`` structures moves into: ``num_devices * 2**k >= live``.

  Powers of two keep the set of compiled shapes small and shared between buckets and calls.
  """
  per_device = max(1, math.ceil(live / num_devices))
  return num_devices * (1 << (per_device - 1).bit_length())


def _padding_crystals(batch: int, width: int) -> Crystals:
  """``batch`` padding structures (no atoms) with ``width`` atom slots (numpy)."""
  return Crystals(
    positions=np.zeros((batch, width, 3), np.float32),
    lattice=np.tile(np.eye(3, dtype=np.float32) * 10.0, (batch, 1, 1)),
    atomic_numbers=np.zeros((batch, width), np.int32),
    mask=np.zeros((batch, width), bool),
    n_atoms=np.zeros((batch,), np.int32),
  )
