"""Operators that start and stop Kore.ai campaigns (see :mod:`airflow_provider_kore.operators.campaign`)."""
