"""A stand-in for ``safetensors.safe_open`` that counts what is read: the bytes of every
tensor or slice taken, per file and per tensor name, and the files open. Tests patch it
where the code under test looks ``safe_open`` up."""

from __future__ import annotations

import os

import numpy as np
from safetensors import safe_open as real_safe_open


class ReadCounter:
    def __init__(self):
        self.reads: list = []        # (file basename, tensor name, bytes)
        self.open = 0                # files open now
        self.opened = 0              # files opened so far

    def __call__(self, path, framework, **kw):
        return _Handle(self, os.path.basename(str(path)), real_safe_open(path, framework=framework, **kw))

    def reset(self) -> None:
        self.reads.clear()

    @property
    def bytes(self) -> int:
        return sum(n for _, _, n in self.reads)

    @property
    def names(self) -> set:
        return {name for _, name, _ in self.reads}

    def by_file(self) -> dict:
        """{file basename: bytes read from it}."""
        out: dict = {}
        for f, _, n in self.reads:
            out[f] = out.get(f, 0) + n
        return out

    def read(self, file_prefix: str) -> int:
        """Bytes read from the files whose name starts with ``file_prefix``."""
        return sum(n for f, _, n in self.reads if f.startswith(file_prefix))

    def count(self, fname: str, name: str, t):
        size = t.element_size() if hasattr(t, "element_size") else t.itemsize
        self.reads.append((fname, name, int(np.prod(t.shape)) * size))
        return t


class _Handle:
    def __init__(self, counter, fname, inner):
        self.counter, self.fname, self.inner = counter, fname, inner

    def __enter__(self):
        self.inner.__enter__()
        self.counter.open += 1
        self.counter.opened += 1
        return self

    def __exit__(self, *exc):
        self.counter.open -= 1
        return self.inner.__exit__(*exc)

    def keys(self):
        return self.inner.keys()

    def metadata(self):
        return self.inner.metadata()

    def get_tensor(self, name):
        return self.counter.count(self.fname, name, self.inner.get_tensor(name))

    def get_slice(self, name):
        return _Slice(self.counter, self.fname, name, self.inner.get_slice(name))


class _Slice:
    def __init__(self, counter, fname, name, inner):
        self.counter, self.fname, self.name, self.inner = counter, fname, name, inner

    def get_shape(self):
        return self.inner.get_shape()

    def get_dtype(self):
        return self.inner.get_dtype()

    def __getitem__(self, index):
        return self.counter.count(self.fname, self.name, self.inner[index])
