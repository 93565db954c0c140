"""Certified training: losses, schedules and the evaluation of trained classifiers."""
