"""Training configs for ``crystal-search train --config=experiments/configs/NAME.py[:ARG]``.

Every file's ``get_config(arg)`` returns a ConfigDict with the keys of
:func:`crystal_search.training.get_default_config` (unknown keys are refused).

==================  ==============================================================
file                what it trains
==================  ==============================================================
default.py          the paper's force/stress model and protocol (section 3.3)
noise_sweep.py      Table 1: noise std 0 / 0.01 / 0.02 / 0.03 Å × seeds 0, 1, 2
                    (``:NOISE,SEED``; ``noise_sweep.SWEEP`` lists the 12 runs)
energy_baseline.py  Table 2: energy model, rotation augmentation only
md_baseline.py      Table 2: the force/stress model trained on MD frames
stress_heads.py     Table 5: ``:plane`` / ``:corner`` / ``:global`` stress output
test.py             a tiny run for the end-to-end test (seconds of training)
data.py             the dataset folder and the Li15Si4 holdout (a sub-config)
==================  ==============================================================

Scales: append ``,cpu`` (default) or ``,paper`` to the argument (``default.py:paper``,
``noise_sweep.py:0.02,1,paper``).  ``paper`` is the paper's network and budget for an
accelerator; ``cpu`` is a smaller network, a frame cap and fewer epochs that train in
about 20 minutes on this 2-core machine (values and measured step times in ``default.py``).
"""
