"""Evaluation: scoring a split, its summary and report, figures, boundary distances, robustness to
other scanners, and the reviewer's decisions on flagged masks."""
