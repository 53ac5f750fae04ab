"""Evaluation of checkpoints: metrics, and temperature calibration with its coverage/precision report."""
