"""Labelled frames, the paper's sampling protocol, splits and importers."""
