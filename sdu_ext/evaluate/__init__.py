"""Evaluation protocols of SPEC sections 5 and 6.

- :mod:`~sdu_ext.evaluate.metrics`: per-layer distance to y* (mean and spread), NMSE in
  dB, objective, sparsity, descending frequency (:func:`layer_metrics`) of unrolled
  sparse-coding networks.
- :mod:`~sdu_ext.evaluate.robustness`: the perturbation sweep over sigma and the OOD
  shift scored against the optimum of the shifted signals.
- :mod:`~sdu_ext.evaluate.inpainting`: PSNR, SSIM, per-layer metrics and the perturbation
  sweep of GLOW-Prox inpainting.
- :mod:`~sdu_ext.evaluate.plots`: PNG plots of all of them (matplotlib, imported lazily).
"""
from .inpainting import psnr, ssim
from .metrics import (descending_frequency, evaluate_model, iterations_to_match, layer_metrics, nmse_db,
                      run_iterates)
from .robustness import (RescaledNoise, layer_descending, log_gradient_noise, ood_shift, perturbation_sweep,
                         perturbed_iterates, seeded_generator, shift_signals, shifted_data)

__all__ = ["run_iterates", "nmse_db", "descending_frequency", "layer_metrics", "evaluate_model",
           "iterations_to_match", "psnr", "ssim",
           "RescaledNoise", "log_gradient_noise", "seeded_generator", "perturbed_iterates", "layer_descending",
           "perturbation_sweep", "shift_signals", "shifted_data", "ood_shift"]
