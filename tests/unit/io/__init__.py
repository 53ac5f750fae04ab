"""Unit tests of shared/io/."""
