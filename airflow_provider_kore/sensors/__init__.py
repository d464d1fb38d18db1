"""Sensors that wait on Kore.ai campaigns (see :mod:`airflow_provider_kore.sensors.campaign`)."""
