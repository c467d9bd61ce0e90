"""The one exception type for bad user input.

Binaries catch :class:`InputError` and print ``error: <message>`` on one line
(no traceback) with a non-zero exit code; library code raises it with a message
that names the file or value and the problem.
"""

from __future__ import annotations


class InputError(ValueError):
  """Bad input from a user: a file, a composition, a config value.

  The message is one line that names the offending input and the problem.
  """
