"""Data files shipped inside the package (the default corpus and its tokenizer)."""
