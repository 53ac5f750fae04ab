"""Config loading and checking: the pipeline, cluster, teacher and student configs and their weights requests."""
