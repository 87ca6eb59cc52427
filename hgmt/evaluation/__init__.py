"""Evaluation: metric protocols (hgmt's, BodyNet's, SURREAL's), the evaluator of a split, its
summary's Markdown report and its pictures."""
