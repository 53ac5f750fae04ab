"""Unit tests of shared/evaluate/."""
