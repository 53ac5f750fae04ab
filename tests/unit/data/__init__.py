"""Unit tests of shared/data/."""
