"""Unit tests of shared/train/."""
