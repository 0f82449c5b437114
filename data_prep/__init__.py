"""FER2013 data preparation: CSV or image folders -> Hugging Face `datasets` Arrow shards, and synthetic
FER2013 CSVs. The bottom layer, so it also holds the file helpers every layer shares (files.py)."""
