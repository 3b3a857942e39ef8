"""Bayesian analysis of journey experiments, from sufficient statistics only.

Pure functions on frozen dataclasses: nothing here imports Flask or SQLAlchemy, and
PyMC is imported only by the opt-in full-model path.
"""
