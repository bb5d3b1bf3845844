"""Command-line entry points; each command only adapts the plain functions it calls."""
