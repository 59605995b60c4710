"""Shim for tools that still call setup.py; the package metadata lives in pyproject.toml (PEP 621)."""
from setuptools import setup

setup()
