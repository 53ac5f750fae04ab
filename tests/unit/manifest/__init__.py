"""Unit tests of shared/manifest/."""
