"""Baseline GANs that score guidance is built on and compared against.

``baselines.controlgan`` contains ControlGAN (Lee and Seok, 2019), the baseline of ScoreGAN, and the
trainer that turns it into ScoreGAN when score guidance is on.
"""
