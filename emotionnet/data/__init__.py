"""Prepared Arrow datasets into batches: data sources, preprocessing, augmentation, loaders."""
