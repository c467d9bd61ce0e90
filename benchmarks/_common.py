"""What every benchmark records beside its numbers: the machine it ran on and its command line.

The scripts run as ``python benchmarks/NAME.py`` (so this folder is on ``sys.path``) and import
this module as ``_common``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys


def machine(**extra) -> dict:
  """Platform, CPU model and count, Python, JAX backend and devices, load at start; ``extra``
  adds script-specific entries (e.g. thread settings)."""
  import jax

  info = {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_model": None,
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "load_average_at_start": os.getloadavg(),
  }
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    info["cpu_model"] = names[0] if names else None
  except OSError:
    pass
  info.update(extra)
  return info


def describe(info: dict) -> str:
  """One line for a report's header: ``platform, N CPUs (model)`` and the devices if not CPU."""
  text = f"{info['platform']}, {info['cpu_count']} CPUs"
  if info.get("cpu_model"):
    text += f" ({info['cpu_model']})"
  if info.get("jax_backend") not in (None, "cpu"):
    text += f"; {info['jax_backend']}: {', '.join(info.get('devices', []))}"
  return text


def command_line(argv: list[str] | None = None) -> str:
  """The command that ran this script, as it can be pasted into a shell."""
  argv = sys.argv if argv is None else argv
  return " ".join(["python", *(shlex.quote(a) for a in argv)])
