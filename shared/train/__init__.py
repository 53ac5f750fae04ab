"""Training: the loop, distributed setup, pretrained weights, teachers, the student and the baseline."""
