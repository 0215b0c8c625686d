"""Mechanics of the hard-sample experiments, one module per subject; scripts import them through utils.py."""
