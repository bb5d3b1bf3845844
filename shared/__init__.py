"""DTLR common layer: what several services use (store, manifest, settings, statistics...).

Nothing here imports a service (tests/test_layers.py checks it from the import graph).
"""
