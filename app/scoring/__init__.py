"""Scoring: pure checks (`checks`, `claims`) and the one judge that applies them to an answer (`judge`)."""
