"""Lipschitz-bounded networks."""
