"""The training manifest: what a run trained, on what data, with which results."""
