"""Files and storage every layer uses: atomic writes, gs:// access, records, checkpoints, environment, progress."""
