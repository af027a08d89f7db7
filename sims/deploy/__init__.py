"""Helpers for running fish-fl on several machines with Flower's deployment engine.

See ``docs/deployment.md``.
"""
