"""Lipschitz bounds, by construction (``layers``, ``models``: networks whose bound holds for any weights) and
by estimation (``estimate``) for any loaded model, and the L2 certificates they give (``certify``)."""
