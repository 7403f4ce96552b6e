"""Batch evaluation: running and caching answers (`run`), the pure verdict (`verdict`), the report (`report`), and
the command line (`cli`, `python -m app.eval`)."""
