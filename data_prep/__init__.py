"""FER2013 data preparation: CSV or image folders -> Hugging Face `datasets` Arrow shards."""
