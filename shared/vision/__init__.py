"""Image pipelines: augmentation, smart crop and the dataset reading the image cache."""
