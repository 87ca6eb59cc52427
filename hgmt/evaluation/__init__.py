"""Evaluation: metric protocols (hgmt's, BodyNet's, SURREAL's), the evaluator of a split, and its
pictures."""
