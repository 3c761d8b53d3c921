"""Data: readers, label conventions, synthetic data, preprocessing and training datasets."""
