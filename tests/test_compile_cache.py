"""The binaries' persistent JAX compilation cache: where it goes, how it is switched off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_JIT = (
  "from crystal_search import compile_cache; import jax; "
  "d = compile_cache.enable(min_compile_time_s=0); "
  "print(d); jax.jit(lambda x: x * 3 + 1)(1.0).block_until_ready()"
)


def _python(code: str, **env) -> str:
  unset = ("JAX_COMPILATION_CACHE_DIR", "CRYSTAL_SEARCH_JAX_CACHE", "XDG_CACHE_HOME")
  environ = {k: v for k, v in os.environ.items() if k not in unset}
  environ.update(env, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
  )
  return out.stdout.strip().splitlines()[-1]


def test_compiled_programs_land_in_the_named_directory(tmp_path):
  cache = tmp_path / "cache"
  assert _python(_JIT, CRYSTAL_SEARCH_JAX_CACHE=str(cache)) == str(cache)
  assert any(cache.iterdir())


@pytest.mark.parametrize("value", ["off", ""])
def test_the_cache_can_be_switched_off(tmp_path, value):
  home = tmp_path / "home"
  assert _python(_JIT, CRYSTAL_SEARCH_JAX_CACHE=value, HOME=str(home)) == "None"
  assert not home.exists()


def test_default_directory_follows_xdg_and_a_jax_setting_wins(tmp_path):
  code = "from crystal_search import compile_cache; print(compile_cache.default_directory())"
  got = _python(code, XDG_CACHE_HOME=str(tmp_path))
  assert got == str(tmp_path / "crystal_search" / "jax")
  assert _python(code, HOME=str(tmp_path)) == str(tmp_path / ".cache" / "crystal_search" / "jax")
  mine = tmp_path / "mine"
  assert _python(_JIT, JAX_COMPILATION_CACHE_DIR=str(mine)) == str(mine)


def test_an_unwritable_place_means_no_cache_not_an_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert _python(_JIT, CRYSTAL_SEARCH_JAX_CACHE=str(blocker / "cache")) == "None"


def test_every_binary_turns_the_cache_on(tmp_path):
  code = (
    "import jax; from experiments.common import run; "
    "run(lambda argv: print(jax.config.jax_compilation_cache_dir), argv=['x'])"
  )
  assert _python(code, CRYSTAL_SEARCH_JAX_CACHE=str(tmp_path / "c")) == str(tmp_path / "c")
