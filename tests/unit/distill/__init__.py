"""Unit tests of shared/distill/."""
