"""Test-only generators of synthetic stores (not part of the installed package)."""
