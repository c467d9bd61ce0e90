"""The search binary's flags: every search config field as ``--search.FIELD``, short aliases for
the common ones, defaults only from :func:`crystal_search.search.get_search_config`."""

import json
import os
import subprocess
import sys

import pytest

from crystal_search import search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Parses a command line as `crystal-search search` does and prints the resulting config as JSON
# (errors as `error: ...`, as the binary reports them).  EXTRA edits the config defaults first.
_PARSE = """
from crystal_search import search

_defaults = search.get_search_config


def _edited():
  c = _defaults()
{extra}
  return c


search.get_search_config = _edited
from experiments import search as binary
from experiments.common import run

run(lambda argv: print(binary.search_config().to_json()))
"""


def _parse(*args, extra="  pass"):
  return subprocess.run(
    [sys.executable, "-c", _PARSE.format(extra=extra), *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def _config(*args, extra="  pass"):
  out = _parse(*args, extra=extra)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _error(*args):
  out = _parse(*args)
  assert out.returncode == 1, out.stdout[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
  return lines[0]


def test_alias_and_config_flag_set_the_same_field_and_the_rest_keeps_the_config_defaults():
  defaults = search.get_search_config().to_dict()
  want = dict(defaults, composition="LiSi")
  assert _config("--composition=LiSi") == want
  assert _config("--search.composition=LiSi") == want
  assert _config("--composition=LiSi", "--search.composition=LiSi") == want
  # Each alias reaches its field, with the field's type.
  got = _config(
    "--search.composition=LiSi",
    "--num_structures=7",
    "--fmax=0.1",
    "--primitive_cells",
    "--formula_units=2",
    "--optimizer=damped",
    "--trajectories",
    "--search.energy_window=0.02",
  )
  assert got == dict(
    want,
    num_structures=7,
    fmax=0.1,
    primitive_cells=True,
    formula_units="2",
    optimizer="damped",
    write_trajectories=True,
    energy_window=0.02,
  )


def test_an_alias_default_is_the_configs_and_new_fields_need_no_flag():
  """The aliases default to None, which takes the config's value: a changed default in
  ``get_search_config`` is the binary's default, and a new field is a flag at once."""
  edit = "  c.num_structures = 11\n  c.fmax = 0.02\n  c.polish_steps = 5"
  got = _config("--composition=LiSi", extra=edit)
  assert got["num_structures"] == 11 and got["fmax"] == 0.02 and got["polish_steps"] == 5
  got = _config("--composition=LiSi", "--search.polish_steps=9", "--max_steps=3", extra=edit)
  assert got["polish_steps"] == 9 and got["max_steps"] == 3 and got["num_structures"] == 11


@pytest.mark.parametrize(
  "args,message",
  [
    ((), "--composition is required"),
    (("--composition=LiSi", "--search.composition=Li"), "disagree"),
    (("--composition=LiSi", "--fmax=0.1", "--search.fmax=0.2"), "--fmax=0.1 and --search.fmax"),
  ],
)
def test_missing_or_conflicting_settings_are_one_line(args, message):
  assert message in _error(*args)


@pytest.mark.parametrize("flag", ["--composition", "--search.composition"])
def test_the_binary_takes_the_composition_both_ways(flag, tmp_path):
  """Through ``crystal-search search``: a composition the model cannot take is refused in one
  line naming it, whichever spelling carried it."""
  out = subprocess.run(
    [sys.executable, "-m", "experiments.cli", "search", f"{flag}=LiXe", f"--output_dir={tmp_path}"]
    + ["--quiet"],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: composition 'LiXe'"), out.stderr
  assert not os.listdir(tmp_path)
