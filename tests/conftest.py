"""Shared test settings: every test runs the CI-sized (fast mode) configuration."""

import os

import matplotlib
import torch

os.environ["LAB_FAST"] = "1"
matplotlib.use("Agg")
torch.set_num_threads(2)
