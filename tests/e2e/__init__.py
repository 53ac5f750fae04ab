"""End to end: the whole DAG through kfp.local."""
