"""The plant-ID training library: plain functions and small classes over paths,
arrays and records. Nothing here imports KFP; components/ are thin shells over it."""
