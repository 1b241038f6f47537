"""Tokenized corpora (PaddleNLP .bin/.idx and legacy .npy/.npz) and sampling."""

from llmpre.data.corpus import DataError, corpus_exists, open_corpus
from llmpre.data.gpt_dataset import SPLIT_NAMES, GPTDataset, IndexCache, build_gpt_datasets

__all__ = [
    "DataError",
    "GPTDataset",
    "IndexCache",
    "SPLIT_NAMES",
    "build_gpt_datasets",
    "corpus_exists",
    "open_corpus",
]
