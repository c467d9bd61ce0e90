"""Training: loss masking, learning-rate schedule, batching, data checks, workdir rules, resume."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_data import make_dataset, make_frames

from crystal_search import training
from crystal_search.crystals import bucket_size
from crystal_search.errors import InputError
from crystal_search.training import loop as training_loop

# ----------------------------------------------------------------------------
# Loss.


def test_masked_mse_matches_numpy_on_real_entries():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(3, 8, 3))
  target = rng.normal(size=(3, 8, 3))
  mask = np.zeros((3, 8), bool)
  mask[0, :5] = mask[1, :2] = True
  got = training.masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)[..., None])
  want = np.mean((pred[mask] - target[mask]) ** 2)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  nothing = training.masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.zeros((3, 8, 1), bool))
  assert float(nothing) == 0.0


def test_padding_atoms_and_structures_do_not_change_the_loss():
  rng = np.random.default_rng(1)
  b, n = 4, 8
  mask = np.zeros((b, n), bool)
  mask[0, :3] = mask[1, :6] = mask[2, :1] = True  # structure 3 is padding
  fp, ft = rng.normal(size=(b, n, 3)), rng.normal(size=(b, n, 3))
  sp, st = rng.normal(size=(b, 3, 3)), rng.normal(size=(b, 3, 3))
  loss, (f, s) = training.force_stress_loss(fp, sp, ft, st, jnp.asarray(mask))
  # Garbage on padding atoms and in the padding structure changes nothing.
  fp2, sp2 = fp.copy(), sp.copy()
  fp2[~mask] = 1e6
  sp2[3] = -1e6
  loss2, _ = training.force_stress_loss(fp2, sp2, ft, st, jnp.asarray(mask))
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  # Independent reference: means over real atom components and real structures' 9 components.
  f_ref = np.mean((fp[mask] - ft[mask]) ** 2)
  s_ref = np.mean((sp[:3] - st[:3]) ** 2)
  np.testing.assert_allclose(float(f), f_ref, rtol=1e-6)
  np.testing.assert_allclose(float(s), s_ref, rtol=1e-6)
  np.testing.assert_allclose(float(loss), f_ref + s_ref, rtol=1e-6)
  # A wider padded copy (more atom slots, one more padding structure) gives the same loss.
  wide = lambda x, width: np.concatenate([x, np.zeros((b, width - n) + x.shape[2:])], axis=1)
  mask_w = np.concatenate([wide(mask, 16), np.zeros((1, 16), bool)])
  fp_w = np.concatenate([wide(fp, 16), np.ones((1, 16, 3))])
  ft_w = np.concatenate([wide(ft, 16), np.zeros((1, 16, 3))])
  sp_w = np.concatenate([sp, np.ones((1, 3, 3))])
  st_w = np.concatenate([st, np.zeros((1, 3, 3))])
  loss_w, _ = training.force_stress_loss(fp_w, sp_w, ft_w, st_w, jnp.asarray(mask_w))
  np.testing.assert_allclose(float(loss_w), float(loss), rtol=1e-6)


# ----------------------------------------------------------------------------
# Learning-rate schedule.


@pytest.mark.parametrize("steps_per_epoch", [1, 7])
def test_learning_rate_halves_every_15_epochs(steps_per_epoch):
  schedule = training.lr_schedule(
    learning_rate=1e-3, halving_epochs=15, steps_per_epoch=steps_per_epoch
  )
  for epoch in range(0, 61):
    for step_in_epoch in (0, steps_per_epoch - 1):
      step = epoch * steps_per_epoch + step_in_epoch
      np.testing.assert_allclose(float(schedule(step)), 1e-3 * 0.5 ** (epoch // 15), rtol=1e-6)


def test_adam_uses_the_schedule():
  """Adam's step size follows the schedule (for a constant gradient each step is ``lr``)."""
  from ml_collections import ConfigDict

  config = ConfigDict(dict(learning_rate=1e-3, lr_halving_epochs=2, grad_clip=0.0))
  tx, _ = training.make_optimizer(config, steps_per_epoch=3)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  grads = {"w": jnp.array([1.0, -2.0])}
  sizes = []
  for _ in range(8):
    updates, state = tx.update(grads, state, params)
    sizes.append(float(jnp.abs(updates["w"][0])))
  # Steps 0-5 are epochs 0-1 (lr 1e-3), steps 6-7 epoch 2 (lr 5e-4); the Adam ratio m/sqrt(v)
  # is 1 for a constant gradient.
  np.testing.assert_allclose(sizes[:6], 1e-3, rtol=1e-3)
  np.testing.assert_allclose(sizes[6:], 5e-4, rtol=1e-3)


# ----------------------------------------------------------------------------
# Batching and data.


def test_bucket_batches_cover_every_frame_once_in_one_bucket_each():
  n_atoms = np.array([2, 9, 3, 16, 17, 8, 5, 40, 2, 2, 11])
  for rng in (None, np.random.default_rng(0)):
    batches = training.bucket_batches(n_atoms, batch_size=2, rng=rng)
    seen = np.concatenate([idx for _, idx in batches])
    assert sorted(seen.tolist()) == list(range(len(n_atoms)))
    for bucket, idx in batches:
      assert 1 <= len(idx) <= 2
      assert all(bucket_size(int(n_atoms[i])) == bucket for i in idx)
  a = training.bucket_batches(n_atoms, batch_size=2, rng=np.random.default_rng(3))
  b = training.bucket_batches(n_atoms, batch_size=2, rng=np.random.default_rng(3))
  assert [(k, i.tolist()) for k, i in a] == [(k, i.tolist()) for k, i in b]


def test_make_batch_pads_structures_and_energy():
  frames = make_frames(0, 5, sizes=(2, 3))
  batch = training.make_batch(frames, np.array([1, 3]), max_atoms=8, batch_size=4)
  assert batch.crystals.positions.shape == (4, 8, 3)
  assert batch.crystals.n_atoms.tolist()[2:] == [0, 0]
  np.testing.assert_allclose(batch.energy[:2], frames.energy[[1, 3]], rtol=1e-6)
  assert batch.energy[2:].tolist() == [0.0, 0.0]


def test_normalization_stats_match_numpy():
  frames = make_frames(1, 6)
  stats = training.normalization_stats(frames)
  np.testing.assert_allclose(stats["force_std"], np.std(frames.forces), rtol=1e-5)
  np.testing.assert_allclose(stats["stress_mean"], np.mean(frames.stress), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    stats["energy_mean"], np.mean(frames.energy / frames.n_atoms), rtol=1e-5
  )


def test_load_dataset_errors_and_holdout(tmp_path):
  with pytest.raises(InputError, match="no such dataset folder"):
    training.load_dataset(_data_config(str(tmp_path / "missing")), elements=("Li", "Si"), seed=0)
  path = make_dataset(str(tmp_path / "d"), counts={"train": 6, "val": 3})
  ds = training.load_dataset(_data_config(path), elements=("Li", "Si"), seed=0)
  assert set(ds.splits) == {"train", "val"} and len(ds.splits["train"]) == 6
  assert len(ds.version) == 16
  with pytest.raises(InputError, match="element"):
    training.load_dataset(_data_config(path), elements=("Li",), seed=0)
  os.remove(os.path.join(path, "val.npz"))
  with pytest.raises(InputError, match="val.npz"):
    training.load_dataset(_data_config(path), elements=("Li", "Si"), seed=0)
  # Frames of a held-out stoichiometry never reach train/val.
  frames = make_frames(5, 8, sizes=(2,))
  formulas = training.frame_formulas(frames)
  frames.save(os.path.join(path, "val.npz"))
  held = formulas[0]
  ds = training.load_dataset(_data_config(path, holdout=(held,)), elements=("Li", "Si"), seed=0)
  assert held not in training.frame_formulas(ds.splits["val"])
  assert len(ds.splits["val"]) == sum(f != held for f in formulas)


def test_cells_too_thin_for_the_image_range_are_dropped_and_logged(tmp_path):
  # A 4 Å cutoff needs floor(4 / h + 1/2) periodic images: 2 down to h = 1.6 Å, 3 below.
  lattices = np.array([np.diag([5.0, 5.0, h]) for h in (5.0, 1.8, 1.3)])
  assert training.too_thin(lattices, cutoff=4.0, max_images=2).tolist() == [False, False, True]
  path = make_dataset(str(tmp_path / "d"), counts={"train": 6, "val": 3})
  frames = make_frames(7, 6)
  frames.lattice[2] = np.diag([6.0, 6.0, 1.2]).astype(frames.lattice.dtype)
  frames.save(os.path.join(path, "train.npz"))
  lines = []
  ds = training.load_dataset(
    _data_config(path), elements=("Li", "Si"), seed=0, log=lines.append, cutoff=4.0, max_images=2
  )
  assert len(ds.splits["train"]) == 5
  assert any("train: dropped 1 frames" in line for line in lines)
  # Without the model's image range nothing is dropped.
  assert len(training.load_dataset(_data_config(path), elements=("Li", "Si")).splits["train"]) == 6


def _data_config(path, holdout=("Li15Si4",)):
  from ml_collections import ConfigDict

  return ConfigDict(dict(path=path, holdout=holdout, max_train_frames=0, max_eval_frames=0))


def test_dataset_version_changes_with_content(tmp_path):
  path = make_dataset(str(tmp_path / "d"), counts={"train": 3, "val": 2})
  v1 = training.dataset_version(path, ["train.npz", "val.npz"])
  make_frames(9, 3).save(os.path.join(path, "train.npz"))
  v2 = training.dataset_version(path, ["train.npz", "val.npz"])
  assert v1 != v2


# ----------------------------------------------------------------------------
# Workdir rules.


def test_prepare_workdir_refuses_another_run(tmp_path):
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  assert training.prepare_workdir(wd, config_digest="a", data_version="x", overwrite=False) is False
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump({"config_hash": "a", "data_version": "x"}, f)
  os.makedirs(os.path.join(wd, "checkpoints"))
  assert training.prepare_workdir(wd, config_digest="a", data_version="x", overwrite=False)
  with pytest.raises(InputError, match="different config") as e:
    training.prepare_workdir(wd, config_digest="b", data_version="x", overwrite=False)
  assert "\n" not in str(e.value)
  with pytest.raises(InputError, match="different data"):
    training.prepare_workdir(wd, config_digest="a", data_version="y", overwrite=False)
  assert not training.prepare_workdir(wd, config_digest="b", data_version="x", overwrite=True)
  assert not os.path.exists(os.path.join(wd, "checkpoints"))


def test_dataclass_replace_keeps_batch_pytree():
  frames = make_frames(2, 3, sizes=(2,))
  batch = training.make_batch(frames, np.arange(3), max_atoms=8, batch_size=4)
  leaves = jax.tree_util.tree_leaves(dataclasses.replace(batch, energy=batch.energy * 2))
  assert len(leaves) == 8


# ----------------------------------------------------------------------------
# Configs.


def _config(name, arg=None):
  import importlib

  module = importlib.import_module(f"experiments.configs.{name}")
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.mark.parametrize(
  "name,arg",
  [
    ("default", None),
    ("default", "paper"),
    ("test", None),
    ("noise_sweep", "0.02,1"),
    ("noise_sweep", "0,2,paper"),
    ("energy_baseline", None),
    ("md_baseline", None),
    ("stress_heads", "corner"),
    ("stress_heads", "global,paper"),
    ("stress_heads", "virial"),
    ("stress_heads", "plane,edge"),
    ("stress_heads", "global,edge,paper"),
    ("pretrained", None),
    ("pretrained_energy", None),
    ("pretrained_energy", "strain"),
    ("pretrained", "wide"),
    ("pretrained", "no_strain"),
    ("pretrained", "plane"),
    ("pretrained", "corner"),
    ("pretrained", "global"),
    ("pretrained", "cutoff4"),
    ("pretrained", "blocks6"),
    ("pretrained", "blocks4"),
    ("pretrained", "long"),
  ],
)
def test_every_experiment_config_is_valid(name, arg):
  config = _config(name, arg)
  training.validate_config(config)
  assert config.scale in ("cpu", "paper")
  assert tuple(config.data.holdout) == ("Li15Si4",)


def test_config_values_of_the_paper():
  c = _config("default", "paper")
  assert c.learning_rate == 1e-3 and c.lr_halving_epochs == 15
  assert c.augment.rotate_fraction == 0.5 and c.augment.noise_fraction == 0.3
  assert c.model.stress_head == "plane" and c.model.cutoff == 4.0
  assert c.model.force_head == "node" and c.model.edge_inputs == "vector"
  assert c.model.num_blocks == 7 and c.model.width == 64 and c.model.embed_dim == 16
  assert c.data.max_train_frames == 0
  cpu = _config("default")
  assert cpu.scale == "cpu" and cpu.num_epochs < c.num_epochs and cpu.data.max_train_frames > 0
  sweep = _config("noise_sweep", "0.03,2")
  assert sweep.augment.noise_std == 0.03 and sweep.seed == 2
  from experiments.configs import noise_sweep

  assert len(noise_sweep.SWEEP) == 12 and len(set(noise_sweep.SWEEP)) == 12
  assert {n for n, _ in noise_sweep.SWEEP} == {0.0, 0.01, 0.02, 0.03}
  energy = _config("energy_baseline")
  assert energy.model_kind == "energy" and energy.augment.noise_fraction == 0.0
  assert energy.augment.rotate_fraction == 0.5
  assert _config("stress_heads", "global").model.stress_head == "global"
  # The paper's heads on the paper's trunk; the CPU default and the 'virial' row use ours.
  assert _config("stress_heads", "corner").model.force_head == "node"
  assert (cpu.model.force_head, cpu.model.stress_head) == ("edge", "virial")
  assert _config("stress_heads", "virial").model.edge_inputs == "rbf"
  # 'HEAD,edge': the paper's stress head beside our force head, on direction-aware edges.
  edge = _config("stress_heads", "corner,edge")
  assert (edge.model.force_head, edge.model.stress_head) == ("edge", "corner")
  assert edge.model.edge_inputs == "vector"
  # The earlier variants differ from the `pretrained` config (5 Å, 6 blocks, 16 vector
  # channels) in its vectors (`blocks6`), also its blocks (`blocks4`), and also its cutoff
  # (`cutoff4`); the other variants keep 4 Å, 4 blocks and no vectors.
  shipped = _config("pretrained").to_dict()
  blocks6, blocks4, cutoff4 = (
    _config("pretrained", v).to_dict() for v in ("blocks6", "blocks4", "cutoff4")
  )
  assert shipped["model"].pop("vector_channels") == 16
  assert blocks6["model"].pop("vector_channels") == 0
  assert blocks6 == shipped
  assert blocks4["model"].pop("vector_channels") == 0
  assert blocks4["model"].pop("num_blocks") == 4 and shipped["model"].pop("num_blocks") == 6
  assert blocks4 == shipped
  assert cutoff4["model"].pop("vector_channels") == 0 and cutoff4["model"].pop("num_blocks") == 4
  assert cutoff4["model"].pop("cutoff") == 4.0 and shipped["model"].pop("cutoff") == 5.0
  assert cutoff4 == shipped
  # 'long' trains the shipped config for longer, nothing else.
  shipped, long = _config("pretrained").to_dict(), _config("pretrained", "long").to_dict()
  assert long.pop("num_epochs") == 75 and shipped.pop("num_epochs") == 45
  assert long == shipped
  assert _config("pretrained", "no_strain").model.cutoff == 4.0
  # 'large' (for accelerators) is the shipped config at the paper's depth and width, every
  # validation frame, no early stopping; 'large_mae' the same on the MAE loss.
  shipped, large = _config("pretrained").to_dict(), _config("pretrained", "large").to_dict()
  for key, value in {"num_blocks": 7, "width": 64, "head_widths": (64, 32)}.items():
    assert tuple(np.ravel(large["model"].pop(key))) == tuple(np.ravel(value))
    shipped["model"].pop(key)
  assert large["model"].pop("vector_channels") == 32 and shipped["model"].pop("vector_channels")
  assert large["model"] == shipped["model"] and large["data"]["path"] == shipped["data"]["path"]
  assert large["data"]["max_eval_frames"] == 0 and large["patience"] == 0
  assert large["scale"] == "paper" and large["loss"] == "mse"
  large, large_mae = (_config("pretrained", v).to_dict() for v in ("large", "large_mae"))
  assert large_mae.pop("loss") == "mae" and large.pop("loss") == "mse"
  assert large_mae == large
  tune = _config("pretrained", "large_finetune_mae")
  assert tune.init_from == "runs/pretrained_large/model" and tune.loss == "mae"


@pytest.mark.parametrize("arg", ["plane,bogus", "virial,node", "plane,edge,node", "tetra"])
def test_bad_stress_head_argument_is_refused(arg):
  with pytest.raises(ValueError, match="head|takes"):
    _config("stress_heads", arg)


@pytest.mark.parametrize(
  "edit,pattern",
  [
    (lambda c: c.__setattr__("learning_rate", -1e-3), "learning_rate"),
    (lambda c: c.augment.__setattr__("noise_std", -0.01), "noise_std"),
    (lambda c: c.model.__setattr__("stress_head", "edge"), "stress_head"),
    (lambda c: c.__setattr__("bogus", 1), "unknown key"),
    (lambda c: c.augment.__setattr__("rotate_fraction", 1.5), "rotate_fraction"),
    (lambda c: c.__setattr__("model_kind", "dipole"), "model_kind"),
    (lambda c: c.__setattr__("batch_size", 0), "batch_size"),
  ],
)
def test_bad_config_is_refused_in_one_line(edit, pattern):
  config = _config("test")
  edit(config)
  with pytest.raises(InputError, match=pattern) as e:
    training.validate_config(config)
  assert "\n" not in str(e.value)


def test_mae_loss_is_the_mean_absolute_standardised_error():
  rng = np.random.default_rng(1)
  fp, ft = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
  sp, st = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 3, 3))
  mask = np.array([[True, True, True, False], [False] * 4])  # structure 2 is padding
  total, (f, s) = training.force_stress_loss(fp, sp, ft, st, mask, loss="mae")
  np.testing.assert_allclose(f, np.abs(fp - ft)[0, :3].mean(), rtol=1e-6)
  np.testing.assert_allclose(s, np.abs(sp - st)[0].mean(), rtol=1e-6)
  np.testing.assert_allclose(total, f + s, rtol=1e-6)
  mse, _ = training.force_stress_loss(fp, sp, ft, st, mask)
  assert not np.isclose(mse, total)


@pytest.mark.parametrize(
  "edit,pattern",
  [
    (lambda c: c.__setattr__("loss", "huber"), "config.loss='huber': expected one of"),
    (
      lambda c: (c.__setattr__("model_kind", "energy"), c.__setattr__("loss", "mae")),
      "energy model trains on the mean squared error only",
    ),
  ],
)
def test_bad_loss_is_refused(edit, pattern):
  config = _config("test")
  edit(config)
  with pytest.raises(InputError, match=pattern):
    training.validate_config(config)


def test_added_training_keys_at_their_old_values_keep_the_hash():
  config = _config("test")
  before = config.to_dict()
  del before["loss"], before["init_from"]
  from ml_collections import ConfigDict

  old = training.config_hash(ConfigDict(before))
  assert training.config_hash(config) == old
  config.loss = "mae"
  assert training.config_hash(config) != old
  # A run.json written before the keys existed still extends to a config that has them.
  longer = _config("test")
  longer.num_epochs += 1
  assert training.extends(before, longer.to_dict())


def test_config_hash_changes_with_any_value():
  a, b = _config("test"), _config("test")
  assert training.config_hash(a) == training.config_hash(b)
  b.augment.noise_std = 0.02
  assert training.config_hash(a) != training.config_hash(b)


# ----------------------------------------------------------------------------
# The loop (in process: the jitted steps are compiled once and shared by these tests).


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
  return make_dataset(
    str(tmp_path_factory.mktemp("data") / "d"),
    seed=4,
    sizes=(2, 3, 4, 5, 6),
    counts={"train": 20, "val": 6, "test": 6},
  )


def _tiny_config(data, **overrides):
  config = _config("test")
  config.data.path = data
  for k, v in overrides.items():
    target = config
    *parents, leaf = k.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = v
  return config


def test_killed_and_resumed_run_equals_uninterrupted_run(tiny_dataset, tmp_path):
  config = _tiny_config(tiny_dataset)
  straight = training.train(config, str(tmp_path / "a"), progress=False)
  assert straight.epochs == 3 and straight.model_dir is not None
  part = training.train(config, str(tmp_path / "b"), progress=False, stop_after=2)
  assert part.epochs == 2 and part.model_dir is None
  messages = []
  resumed = training.train(config, str(tmp_path / "b"), progress=False, log=messages.append)
  assert resumed.resumed_from == 2 and resumed.epochs == 3
  assert any("resuming from epoch 2" in m for m in messages)
  for x, y in zip(
    jax.tree_util.tree_leaves(straight.params), jax.tree_util.tree_leaves(resumed.params)
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert straight.test == resumed.test
  # Training moved the parameters, and the metrics file holds every epoch once.
  rows = training.read_metrics(str(tmp_path / "b"))
  assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
  for a, b in zip(rows, training.read_metrics(str(tmp_path / "a"))):
    assert {k: v for k, v in a.items() if k != "seconds"} == {
      k: v for k, v in b.items() if k != "seconds"
    }
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  # The exported model carries the data version and test metrics.
  from crystal_search.models import io as model_io

  kind, _, variables, metadata = model_io.load_model(straight.model_dir)
  assert kind == "force_stress"
  assert (
    metadata["data_version"] == training.load_dataset(config.data, elements=("Li", "Si")).version
  )
  assert set(metadata["test_metrics"]) == {"test"}
  assert np.all(np.asarray(variables["normalization"]["force_std"]) > 0)


def test_extend_continues_a_finished_shorter_run(tiny_dataset, tmp_path):
  """``extend``: a finished 2-epoch run continued to 3 epochs equals a straight 3-epoch run;
  without ``extend`` the longer config is refused as another run."""
  config = _tiny_config(tiny_dataset)
  assert config.num_epochs == 3
  straight = training.train(config, str(tmp_path / "a"), progress=False)
  short = _tiny_config(tiny_dataset, num_epochs=2)
  first = training.train(short, str(tmp_path / "b"), progress=False)
  assert first.epochs == 2 and first.model_dir is not None
  with pytest.raises(InputError, match="different config"):
    training.train(config, str(tmp_path / "b"), progress=False)
  longer = training.train(config, str(tmp_path / "b"), progress=False, extend=True)
  assert longer.resumed_from == 2 and longer.epochs == 3 and longer.model_dir is not None
  for x, y in zip(
    jax.tree_util.tree_leaves(straight.params), jax.tree_util.tree_leaves(longer.params)
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert [int(r["epoch"]) for r in training.read_metrics(str(tmp_path / "b"))] == [1, 2, 3]
  with open(tmp_path / "b" / "run.json") as f:
    run = json.load(f)
  assert run["config_hash"] == training.config_hash(config)
  assert run["extended_from"] == {"config_hash": training.config_hash(short), "num_epochs": 2}
  # Fewer epochs, or any other change, is not an extension.
  assert not training.extends(config.to_dict(), short.to_dict())
  other = _tiny_config(tiny_dataset, num_epochs=4, learning_rate=5e-4)
  assert not training.extends(short.to_dict(), other.to_dict())
  assert training.extends(short.to_dict(), config.to_dict())


def test_init_from_starts_at_an_exported_model_and_mae_fine_tunes_it(tiny_dataset, tmp_path):
  """``init_from``: the run starts at the exported model's variables (its normalisation kept)
  and records where it started; ``loss='mae'`` lowers the validation MAE loss it logs."""
  from crystal_search.models import io as model_io

  base = training.train(_tiny_config(tiny_dataset), str(tmp_path / "a"), progress=False)
  _, _, start, _ = model_io.load_model(base.model_dir)
  config = _tiny_config(
    tiny_dataset, init_from=base.model_dir, loss="mae", num_epochs=1, learning_rate=1e-4
  )
  messages = []
  zero = training.train(
    config, str(tmp_path / "b"), progress=False, stop_after=0, log=messages.append
  )
  assert zero.epochs == 0 and any("starting from" in m for m in messages)
  for x, y in zip(
    jax.tree_util.tree_leaves(start["params"]), jax.tree_util.tree_leaves(zero.params)
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  tuned = training.train(config, str(tmp_path / "b"), progress=False)
  assert tuned.model_dir is not None
  _, _, after, _ = model_io.load_model(tuned.model_dir)
  for key in ("force_std", "stress_mean"):
    np.testing.assert_array_equal(after["normalization"][key], start["normalization"][key])
  with open(tmp_path / "b" / "run.json") as f:
    run = json.load(f)
  assert run["init_from"]["path"] == base.model_dir
  assert run["init_from"]["config_hash"] == training.config_hash(_tiny_config(tiny_dataset))
  # The logged validation loss is the MAE loss: the force and stress MAEs over their standard
  # deviations, not their squares (within 3 %: the physical outputs are post-processed, e.g.
  # the stress symmetrised, after the standardised ones).
  row = training.read_metrics(str(tmp_path / "b"))[-1]
  f_std, s_std = (np.ravel(start["normalization"][k]) for k in ("force_std", "stress_std"))
  assert np.all(f_std == f_std[0]) and np.all(s_std == s_std[0])  # one std per quantity
  f_std, s_std = float(f_std[0]), float(s_std[0])
  np.testing.assert_allclose(
    float(row["val_loss"]),
    float(row["val_force_mae"]) / f_std + float(row["val_stress_mae"]) / s_std,
    rtol=0.03,
  )


@pytest.mark.parametrize(
  "edit,pattern",
  [
    (lambda c, d: c.__setattr__("init_from", str(d)), "config.init_from: .*not a model directory"),
    (lambda c, d: c.model.__setattr__("width", 8), "its model config differs in width"),
    (lambda c, d: c.__setattr__("model_kind", "energy"), "a force_stress model, but"),
  ],
)
def test_init_from_a_mismatched_model_is_refused_in_one_line(tiny_dataset, tmp_path, edit, pattern):
  base = training.train(
    _tiny_config(tiny_dataset, num_epochs=1), str(tmp_path / "a"), progress=False
  )
  config = _tiny_config(tiny_dataset, init_from=base.model_dir)
  edit(config, tmp_path)
  with pytest.raises(InputError, match=pattern) as e:
    training.train(config, str(tmp_path / "b"), progress=False)
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "b")


def test_neighbour_overflow_grows_capacity_and_redoes_the_step(tiny_dataset, tmp_path, monkeypatch):
  real = training.neighbour_capacities
  exact = real(
    [training.load_dataset(_data_config(tiny_dataset), elements=("Li", "Si")).splits["train"]],
    cutoff=4.0,
    margin=1.0,
  )
  # Allocate one edge too few for the largest training structure of each bucket.
  monkeypatch.setattr(
    training_loop, "neighbour_capacities", lambda *a, **k: {b: n - 1 for b, n in exact.items()}
  )
  messages = []
  config = _tiny_config(tiny_dataset, num_epochs=1)
  result = training.train(config, str(tmp_path / "w"), progress=False, log=messages.append)
  grown = [m for m in messages if "grown" in m]
  assert grown, messages
  assert all(result.capacities[b] >= exact[b] for b in exact)
  rows = training.read_metrics(str(tmp_path / "w"))
  assert rows[0]["skipped_steps"] == 0 and np.isfinite(rows[0]["train_loss"])


def test_early_stopping_after_patience_epochs(tiny_dataset, tmp_path, monkeypatch):
  """A validation loss that never improves stops the run after ``patience`` more epochs."""
  real = training.evaluate_frames
  calls = []

  def flat_val(*args, **kwargs):
    out = real(*args, **kwargs)
    calls.append(out)
    return dict(out, loss=1.0)

  monkeypatch.setattr(training_loop, "evaluate_frames", flat_val)
  config = _tiny_config(tiny_dataset, num_epochs=10, patience=2)
  messages = []
  result = training.train(config, str(tmp_path / "w"), progress=False, log=messages.append)
  assert result.stopped_early and result.epochs == 3 and result.best_epoch == 1
  assert any("early stopping" in m for m in messages)
  assert [int(r["epoch"]) for r in training.read_metrics(str(tmp_path / "w"))] == [1, 2, 3]
  # Rerunning a finished run neither trains further nor rewrites its exported model.
  model_json = tmp_path / "w" / "model" / "model.json"
  written = model_json.stat().st_mtime_ns
  again = training.train(config, str(tmp_path / "w"), progress=False, log=messages.append)
  assert again.epochs == 3 and again.resumed_from == 3
  assert again.test == result.test and again.model_dir == str(tmp_path / "w" / "model")
  assert model_json.stat().st_mtime_ns == written
  assert any("already finished" in m for m in messages)
  # A finished run whose model is missing exports it again.
  model_json.unlink()
  third = training.train(config, str(tmp_path / "w"), progress=False)
  assert model_json.exists() and third.test == result.test


def test_time_budget_ends_the_run_and_exports_its_best_model(tiny_dataset, tmp_path, monkeypatch):
  """``max_train_minutes``: the run ends after the epoch in which its summed epoch time reaches
  the budget (counted over invocations), exports its best model as a finished run does, and a
  larger budget with ``extend`` continues it."""
  import types

  clock = {"t": 0.0}

  def fake_time():  # each epoch: one call at its start, one at its end, 30 s apart
    clock["t"] += 30.0
    return clock["t"]

  monkeypatch.setattr(training_loop, "time", types.SimpleNamespace(time=fake_time))
  from crystal_search.models import io as model_io

  config = _tiny_config(tiny_dataset, num_epochs=10, patience=0, max_train_minutes=1.5)
  messages = []
  part = training.train(config, str(tmp_path / "w"), progress=False, stop_after=1)
  assert part.epochs == 1 and part.model_dir is None
  result = training.train(config, str(tmp_path / "w"), progress=False, log=messages.append)
  assert result.epochs == 3 and result.model_dir is not None and not result.stopped_early
  assert any("time budget of 1.5 min spent after epoch 3" in m for m in messages), messages
  _, _, _, metadata = model_io.load_model(result.model_dir)
  assert metadata["stopped_on_budget"] and metadata["train_minutes"] == 1.5
  assert [int(r["epoch"]) for r in training.read_metrics(str(tmp_path / "w"))] == [1, 2, 3]
  # A larger budget is an extension of the run; a smaller one is not.
  more = _tiny_config(tiny_dataset, num_epochs=10, patience=0, max_train_minutes=2.0)
  assert training.extends(config.to_dict(), more.to_dict())
  assert not training.extends(more.to_dict(), config.to_dict())
  longer = training.train(more, str(tmp_path / "w"), progress=False, extend=True)
  assert longer.resumed_from == 3 and longer.epochs == 4
  # No budget: the same config trains its epochs; the key is left out of the hash at 0.
  assert training.config_hash(_tiny_config(tiny_dataset)) == training.config_hash(
    _tiny_config(tiny_dataset, max_train_minutes=0.0)
  )
  with pytest.raises(InputError, match="max_train_minutes"):
    training.validate_config(_tiny_config(tiny_dataset, max_train_minutes=-1.0))


@pytest.mark.slow
def test_energy_baseline_trains_on_energies_per_atom(tiny_dataset, tmp_path):
  config = _config("energy_baseline")
  test_config = _config("test")
  config.model = test_config.model
  for key in ("num_epochs", "batch_size", "eval_batch_size", "learning_rate", "patience"):
    config[key] = test_config[key]
  config.data.path = tiny_dataset
  config.data.max_train_frames = config.data.max_eval_frames = 0
  result = training.train(config, str(tmp_path / "e"), progress=False)
  rows = training.read_metrics(str(tmp_path / "e"))
  assert "val_energy_mae" in rows[0] and np.isfinite(rows[-1]["val_energy_mae"])
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  from crystal_search.models import io as model_io

  kind, _, variables, metadata = model_io.load_model(result.model_dir)
  assert kind == "energy"
  frames = training.load_dataset(config.data, elements=("Li", "Si")).splits["train"]
  per_atom = frames.energy / frames.n_atoms
  np.testing.assert_allclose(variables["normalization"]["energy_mean"], per_atom.mean(), rtol=1e-4)
  assert "energy_mae" in metadata["test_metrics"]["test"]


@pytest.mark.parametrize(
  "directory,kind,config_name,config_arg",
  [
    ("force_stress", "force_stress", "pretrained", "large_mae_contacts"),
    ("force_stress_fast", "force_stress", "pretrained", "finetune_mae"),
    ("energy", "energy", "pretrained_energy", None),
  ],
)
def test_shipped_models_come_from_their_committed_configs_and_data(
  directory, kind, config_name, config_arg
):
  """The package's models were trained by the config and on the dataset the docs name."""
  from crystal_search.models import io as model_io

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  shipped = os.path.join(repo, "crystal_search", "pretrained", directory)
  with open(os.path.join(shipped, "model.json")) as f:
    metadata = json.load(f)["metadata"]
  config = _config(config_name, config_arg)
  assert metadata["config_hash"] == training.config_hash(config)
  assert metadata["training_config"]["data"]["path"] == config.data.path
  assert model_io.load_model(shipped)[0] == kind


def test_the_committed_large_mae_run_resumes_under_its_config():
  """``experiments/results/probes/large_mae`` (trained on the CPU in several runs) is
  ``pretrained.py:large_mae`` at its recorded time budget, so a later run resumes it; a
  larger budget extends it (``--extend``), a smaller one does not."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "experiments", "results", "probes", "large_mae", "run.json")) as f:
    run = json.load(f)
  budget = float(run["config"]["max_train_minutes"])
  assert budget > 0
  config = _config("pretrained", "large_mae")
  config.max_train_minutes = budget
  assert run["config_hash"] == training.config_hash(config)
  config.max_train_minutes = budget + 60
  assert training.extends(run["config"], config.to_dict())
  config.max_train_minutes = budget / 2
  assert not training.extends(run["config"], config.to_dict())


def test_the_contacts_fine_tune_matches_its_committed_dataset_and_starting_model():
  """``pretrained.py:large_mae_contacts`` starts from the committed ``large_mae`` export (same
  model config) and names the settings its committed ``data/dataset_contacts`` was made with."""
  from experiments.configs import pretrained

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = _config("pretrained", "large_mae_contacts")
  config.init_from = os.path.join(repo, config.init_from)
  init = training.load_init_from(config)  # one-line InputError if the model configs differ
  assert init["variables"]["params"]
  with open(os.path.join(repo, pretrained.CONTACTS_DATA, "settings.json")) as f:
    settings = json.load(f)
  flags = pretrained.CONTACTS_SETTINGS
  assert settings["strain"] == {
    "copies": flags["copies"],
    "volume_range": [flags["volume_low"], flags["volume_high"]],
    "shear_std": flags["shear_std"],
    "rattle": flags["rattle"],
    "seed": 0,
  }
  assert settings["source"] == {"kind": "frames", "max_sources": flags["max_sources"]}
  assert 0 < config.grad_clip < 1e-3 and config.loss == "mae"
