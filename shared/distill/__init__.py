"""Distillation: teacher logits, soft labels combined from teachers, and the distillation losses."""
