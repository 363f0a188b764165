"""The experiments of the paper, each of one shape:

    config -> data -> variants -> train -> evaluate -> claims -> report

- :mod:`~sdu_ext.experiments.lista`: constrained vs standard vs standard-with-noise LISTA
  (sparse coding, SPEC section 6).
- :mod:`~sdu_ext.experiments.inpaint`: the same comparison for GLOW-Prox inpainting (SPEC
  section 5).
- :mod:`~sdu_ext.experiments.common`: the run options, the one ``train_variant`` both use,
  checkpoint reading and the checks of a run's folder, device and epochs.
- :mod:`~sdu_ext.experiments.claims`: the paper's claims checked on the metrics, and the
  plain-language reading of a report.
- :mod:`~sdu_ext.experiments.verdicts`: claims decided from seeds (one interval rule; pure functions).
- :mod:`~sdu_ext.experiments.report`: report and table helpers and the two report writers.

The configurations live in :mod:`sdu_ext.presets`; the ``sdu-ext`` command
(:mod:`sdu_ext.cli`) parses arguments and calls the entry points of ``lista`` and
``inpaint``. Importing this package imports nothing else (the CLI stays fast).
"""
__all__ = ["lista", "inpaint", "common", "claims", "verdicts", "report"]
