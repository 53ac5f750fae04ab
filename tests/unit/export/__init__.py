"""Unit tests of shared/export/."""
