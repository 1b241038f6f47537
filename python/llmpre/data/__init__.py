"""Tokenized corpora (PaddleNLP .bin/.idx and legacy .npy/.npz) and sampling."""

from llmpre.data.blend import BlendedDataset, build_datasets
from llmpre.data.corpus import DataError, corpus_exists, open_corpus
from llmpre.data.gpt_dataset import SPLIT_NAMES, GPTDataset, build_gpt_datasets
from llmpre.data.index_cache import BuildPolicy, IndexCache, RankInfo
from llmpre.data.sources import DataSpec, parse_data_spec

__all__ = [
    "BlendedDataset",
    "BuildPolicy",
    "DataError",
    "DataSpec",
    "GPTDataset",
    "IndexCache",
    "RankInfo",
    "SPLIT_NAMES",
    "build_datasets",
    "build_gpt_datasets",
    "corpus_exists",
    "open_corpus",
    "parse_data_spec",
]
