"""KFP components: one module per phase, each a thin typed shell over shared/."""
