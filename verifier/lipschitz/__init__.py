"""Lipschitz bounds, by construction and by estimation, and the L2 certificates they give."""
