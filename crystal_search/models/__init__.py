"""Graph networks of the paper: MEGNet trunk, force/stress and energy models, save/load."""
