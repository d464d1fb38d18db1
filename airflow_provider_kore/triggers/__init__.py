"""Deferrable triggers (run in the triggerer; imported only when a task defers)."""
