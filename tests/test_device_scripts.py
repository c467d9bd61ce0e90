"""The scripts that get a GPU run ready for the `device` tool (scripts/device/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from training_data import make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(repo, *args):
  return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_tree_hide_untracks_bulky_paths_blocks_commits_and_restore_puts_them_back(tmp_path):
  repo = tmp_path / "repo"
  (repo / "scripts" / "device").mkdir(parents=True)
  shutil.copy(os.path.join(ROOT, "scripts", "device", "tree.sh"), repo / "scripts" / "device")
  for path in ("data/teacher/a.npz", "experiments/results/t.md", "crystal_search/x.py"):
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(path)
  _git(repo, "init", "-q")
  _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
  _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
  tracked = _git(repo, "ls-files")
  out = subprocess.run(
    ["bash", "scripts/device/tree.sh", "hide"], cwd=repo, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr
  # What the device tool sends: tracked plus untracked files that git does not ignore.
  travelling = _git(repo, "ls-files", "-co", "--exclude-standard").split()
  assert "crystal_search/x.py" in travelling
  assert not [p for p in travelling if p.startswith(("data/teacher", "experiments/results"))]
  assert (repo / "data" / "teacher" / "a.npz").exists()  # the files stay on disk
  commit = subprocess.run(
    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "oops"],
    cwd=repo,
    capture_output=True,
    text=True,
  )
  assert commit.returncode != 0 and "restore" in commit.stderr
  out = subprocess.run(
    ["bash", "scripts/device/tree.sh", "restore"], cwd=repo, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr
  assert _git(repo, "ls-files") == tracked
  assert _git(repo, "status", "--porcelain") == ""
  assert "tree.sh" not in (repo / ".git" / "info" / "exclude").read_text()
  assert not (repo / ".git" / "hooks" / "pre-commit").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stages", ["", "large large_finetune_mae"])
def test_train_large_runs_its_stages_and_packs_their_models(tmp_path, stages):
  """A dry run of the device training script on the CPU, on a tiny model and dataset: by
  default one ``large_mae`` run on the MAE loss for what is left of the budget; with two
  stages, ``large`` stops on its time budget and the MAE fine-tune starts from its export.
  $OUT holds the log, the summary and one tarball per run."""
  data = make_dataset(str(tmp_path / "data"), seed=3, sizes=(4, 5, 6), counts=None)
  out = tmp_path / "out"
  out.mkdir()
  extra = (
    f"--config.data.path={data} --config.model.cutoff=4.0 --config.model.width=8 "
    "--config.model.num_blocks=1 --config.model.vector_channels=2 "
    "--config.model.head_widths=(8,) --config.model.embed_dim=4 --config.num_epochs=2"
  )
  env = dict(
    os.environ,
    OUT=str(out),
    RUNS=str(tmp_path / "runs"),
    LARGE_MIN="0.001",
    TOTAL_MIN="30",
    EXTRA=extra,
    WHEELS="",
    PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
  )
  if stages:
    env["STAGES"] = stages
  proc = subprocess.run(
    ["bash", "scripts/device/train_large.sh"], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["environment"]["jax"]
  assert "== done" in (out / "log.txt").read_text()
  if not stages:
    assert set(summary) == {"environment", "pretrained_large_mae"}
    run = summary["pretrained_large_mae"]
    # The last (only) stage gets the rest of TOTAL_MIN: here its 2 epochs end it first.
    assert run["rc"] == 0 and not run["stopped_on_budget"] and run["epochs"] == 2
    assert len(run["seconds_per_epoch"]) == 2 and set(run["test_metrics"]) >= {"test"}
    config = json.loads((tmp_path / "runs" / "pretrained_large_mae" / "run.json").read_text())
    assert config["config"]["loss"] == "mae" and config["config"]["model"]["width"] == 8
    return
  large, mae = summary["pretrained_large"], summary["pretrained_large_finetune_mae"]
  assert large["rc"] == 0 and large["stopped_on_budget"] and large["epochs"] == 1
  assert mae["rc"] == 0 and mae["config"].endswith("pretrained.py:large_finetune_mae")
  assert set(large["test_metrics"]) >= {"test"} and len(large["seconds_per_epoch"]) == 1
  run = json.loads((tmp_path / "runs" / "pretrained_large_finetune_mae" / "run.json").read_text())
  assert run["init_from"]["path"].endswith("pretrained_large/model")
  assert run["config"]["loss"] == "mae"
  with tarfile.open(out / "pretrained_large.tgz") as tar:
    names = tar.getnames()
  assert "pretrained_large/model/model.json" in names and "pretrained_large/metrics.csv" in names


def test_relax_gpu_script_dry_runs_on_the_cpu(tmp_path):
  """The GPU relaxation benchmark, as the device call runs it, on 2 cells for 3 steps."""
  env = dict(os.environ, OUT=str(tmp_path), WHEELS="", STARTS="", EXTRA="--num=2 --max_steps=3")
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # this python3
  out = subprocess.run(
    ["bash", "scripts/device/relax_gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  report = json.load(open(tmp_path / "gpu_relax.json"))
  assert report["cells"] == 2 and set(report["settings"]) == {"screen", "polish"}
  for s in report["settings"].values():
    assert s["relaxations_per_hour"] > 0 and s["converged"] + s["failed"] <= 2
  assert (tmp_path / "gpu_relax.md").exists() and (tmp_path / "log.txt").exists()
