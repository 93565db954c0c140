"""Certified training: the certified loss (``loss``), epsilon and loss-weight schedules (``schedules``), IBP
initialisation (``init``), warm-up regularisers (``regularisers``), the standard benchmark architectures
(``models``) and the evaluation of trained classifiers (``evaluate``). Import the submodules directly."""
