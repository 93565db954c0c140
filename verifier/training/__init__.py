"""Certified training: epsilon and loss-weight schedules, IBP initialisation, warm-up regularisers and the
standard benchmark architectures. Import the submodules directly (``verifier.training.schedules``, ...)."""
