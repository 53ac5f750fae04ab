"""Unit tests of shared/config/."""
