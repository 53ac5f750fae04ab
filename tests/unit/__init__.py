"""Unit tests of shared/, one folder per package."""
