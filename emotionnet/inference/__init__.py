"""Using trained models: the export format, ensembles and test-time augmentation, faces in photos."""
