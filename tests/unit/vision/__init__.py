"""Unit tests of shared/vision/."""
