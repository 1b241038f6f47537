#!/usr/bin/env python3
"""Regenerate llmpre's bundled default corpus: Jane Austen's six novels.

Source: the Debian package ``r-cran-janeaustenr`` version ``1.0.0-1`` (Debian 12
"bookworm", section gnu-r, architecture all), which carries the CRAN package
janeaustenr 1.0.0 by Julia Silge: the Project Gutenberg texts of "Sense and
Sensibility", "Pride and Prejudice", "Mansfield Park", "Emma", "Northanger Abbey"
and "Persuasion", one line of text per element of an R character vector. The
novels are in the public domain; the packaging is MIT-licensed (the licence text
is in the package at ``usr/share/doc/r-cran-janeaustenr/copyright``).

Get the package (any Debian/Ubuntu machine with bookworm sources; no R needed)::

    apt-get update
    apt-get download r-cran-janeaustenr=1.0.0-1
    # -> r-cran-janeaustenr_1.0.0-1_all.deb, 1626392 bytes, sha256
    #    df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95
    # (or from a Debian mirror:
    #  pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb)

Then, from the repository root, with the project's venv (numpy, tokenizers, llmpre)::

    RAYON_NUM_THREADS=1 python tools/make_default_corpus.py r-cran-janeaustenr_1.0.0-1_all.deb

What it does, all in this file and deterministic (same input -> same bytes):

1. reads the .deb (ar archive -> data.tar.xz) in Python, no dpkg needed;
2. loads the six character vectors from the R lazy-load database
   ``data/Rdata.rdx`` + ``data/Rdata.rdb`` with a small reader of R's XDR
   serialization format (no R needed);
3. cleans each novel: drops the title page, volume headings, the editors'
   notes ("[End volume one of this edition...]", Northanger Abbey's modern
   "A NOTE ON THE TEXT"), "THE END"/"FINIS", scene-break asterisks and the
   ``_italics_`` underscores; rejoins hard-wrapped lines into paragraphs;
4. cuts every chapter into documents of about ``--words-per-doc`` words at
   paragraph boundaries (paragraphs separated by a blank line);
5. trains a byte-level BPE tokenizer (HF ``tokenizers``; vocab exactly 8192,
   ``<|endoftext|>`` = id 0 is the only special token and marks end of document);
6. tokenizes every document, appends the EOS id and writes
   ``corpus.bin``/``corpus.idx`` (uint16, one item per document) with
   :class:`llmpre.data.writer.CorpusWriter`;
7. writes ``tokenizer.json``, ``meta.json`` and ``SOURCE.md`` beside them.

Output: python/llmpre/assets/default/ (override with --out).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass, field

import numpy as np

PACKAGE = "r-cran-janeaustenr"
VERSION = "1.0.0-1"
DEB_NAME = f"{PACKAGE}_{VERSION}_all.deb"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DEB_URL_PATH = f"pool/main/r/{PACKAGE}/{DEB_NAME}"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data/"
COPYRIGHT = f"usr/share/doc/{PACKAGE}/copyright"

# R object name -> title, in publication order (the order janeaustenr uses).
BOOKS = [
    ("sensesensibility", "Sense and Sensibility", 1811),
    ("prideprejudice", "Pride and Prejudice", 1813),
    ("mansfieldpark", "Mansfield Park", 1814),
    ("emma", "Emma", 1815),
    ("northangerabbey", "Northanger Abbey", 1817),
    ("persuasion", "Persuasion", 1817),
]

VOCAB_SIZE = 8192
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN]  # id 0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "python", "llmpre", "assets", "default")


# --------------------------------------------------------------------------- .deb
def read_deb(path: str) -> dict[str, bytes]:
    """Regular files of a .deb's data archive, keyed by path without './'."""
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:8] != b"!<arch>\n":
        sys.exit(f"{path}: not a .deb (ar archive); get it with: apt-get download {PACKAGE}={VERSION}")
    pos, data = 8, None
    while pos + 60 <= len(blob):
        name = blob[pos : pos + 16].decode("ascii").strip().rstrip("/")
        size = int(blob[pos + 48 : pos + 58].decode("ascii").strip())
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            data = (name, body)
        pos += 60 + size + (size & 1)
    if data is None:
        sys.exit(f"{path}: no data.tar.* member; is this really {DEB_NAME}?")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data[1]), mode="r:*") as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name.lstrip("./")] = tar.extractfile(m).read()
    return out


# --------------------------------------------------------------- R serialization
# Enough of R's XDR serialization (R Internals, "Serialization formats") to read
# character vectors, generic vectors and pairlists with attributes.
_NIL, _SYM, _LIST, _LANG, _CHAR, _LGL, _INT, _REAL, _STR, _VEC, _EXPR = 0, 1, 2, 6, 9, 10, 13, 14, 16, 19, 20
_ATTRLANG, _ATTRLIST, _REF, _NILVALUE = 240, 239, 255, 254
_SPECIALS = {253, 252, 251, 250, 242, 241}  # global/empty/base env, unbound, missing...
_PAIRLISTS = {_LIST, _LANG, _ATTRLANG, _ATTRLIST}


@dataclass
class RVector:
    type: int
    value: list
    attrs: dict = field(default_factory=dict)


class _RReader:
    def __init__(self, data: bytes):
        self.b, self.p, self.refs = data, 0, []

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.p)
        self.p += 4
        return v

    def flags(self):
        f = self.int()
        return f, f & 0xFF, bool(f & (1 << 9)), bool(f & (1 << 10))

    def item(self):
        f, t, has_attr, has_tag = self.flags()
        return self._item(f, t, has_attr, has_tag)

    def _item(self, f, t, has_attr, has_tag):
        if t == _NILVALUE:
            return None
        if t in _SPECIALS:
            return ("special", t)
        if t == _REF:
            i = f >> 8 or self.int()
            return self.refs[i - 1]
        if t == _SYM:
            sym = ("symbol", self.item())
            self.refs.append(sym)
            return sym
        if t in _PAIRLISTS:  # returned as a list of (tag, value)
            out = []
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out.append((tag[1] if tag else None, self.item()))
                f, t, has_attr, has_tag = self.flags()
                if t == _NILVALUE:
                    return out
                if t not in _PAIRLISTS:  # improper list: the CDR is some other object
                    out.append((None, self._item(f, t, has_attr, has_tag)))
                    return out
        if t == _CHAR:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.b[self.p : self.p + n]
            self.p += n
            # bit 12+3 = UTF-8, bit 12+2 = latin1; the rest is ASCII or native (UTF-8 here)
            return s.decode("latin-1" if f & (1 << 14) and not f & (1 << 15) else "utf-8")
        n = self.int()
        if t in (_LGL, _INT):
            value = list(struct.unpack_from(f">{n}i", self.b, self.p))
            self.p += 4 * n
        elif t == _REAL:
            value = list(struct.unpack_from(f">{n}d", self.b, self.p))
            self.p += 8 * n
        elif t in (_STR, _VEC, _EXPR):
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R object type {t} is not supported by this reader")
        attrs = dict(self.item()) if has_attr else {}
        return RVector(t, value, attrs)


def r_unserialize(data: bytes):
    if data[:2] != b"X\n":
        raise ValueError(f"not an R XDR serialization (starts with {data[:2]!r})")
    r = _RReader(data)
    r.p = 2
    version = r.int()
    r.int(), r.int()  # writer's R version, minimal reader version
    if version == 3:
        n = r.int()
        r.p += n  # native encoding name
    elif version != 2:
        raise ValueError(f"R serialization format version {version} is not supported")
    return r.item()


def read_lazyload_db(files: dict[str, bytes], stem: str) -> dict[str, object]:
    """All variables of an R lazy-load database (``stem.rdx`` + ``stem.rdb``)."""
    rdx = files[stem + ".rdx"]
    if rdx[:2] != b"\x1f\x8b":
        raise ValueError(f"{stem}.rdx: expected a gzip-compressed R index")
    index = r_unserialize(gzip.decompress(rdx))
    names = index.attrs["names"].value
    variables = index.value[names.index("variables")]
    rdb = files[stem + ".rdb"]
    out = {}
    for name, where in zip(variables.attrs["names"].value, variables.value):
        offset, length = where.value
        blob = rdb[offset : offset + length]
        (size,) = struct.unpack(">i", blob[:4])
        raw = zlib.decompress(blob[4:])  # R's default lazy-load compression is zlib
        if len(raw) != size:
            raise ValueError(f"{stem}.rdb: {name}: expected {size} bytes, got {len(raw)}")
        out[name] = r_unserialize(raw)
    return out


# -------------------------------------------------------------------- cleaning
_CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)
_VOLUME = re.compile(r"^\s*volume\s+([ivx]+|\d+)\.?\s*$", re.IGNORECASE)
_ENDING = re.compile(r"^\s*(the end|finis)\s*$", re.IGNORECASE)
_EDITORIAL = re.compile(r"^\[(at this point|end volume)", re.IGNORECASE)
_SCENE_BREAK = re.compile(r"^[\s*]+$")


def paragraphs_of(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, hard-wrapped lines joined by spaces."""
    paras, cur = [], []
    for line in lines + [""]:
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            text = " ".join(cur)
            text = text.replace("_", "")  # _italics_ -> italics
            text = re.sub(r"\s+", " ", text).strip()
            if not _SCENE_BREAK.match(text) and not _EDITORIAL.match(text):
                paras.append(text)
            cur = []
    return paras


def chapters_of(name: str, lines: list[str]) -> list[list[str]]:
    """Chapters of one novel as lists of paragraphs; front and end matter dropped."""
    if name == "northangerabbey":  # a modern editor's note follows the novel
        lines = lines[: lines.index("A NOTE ON THE TEXT")]
    chapters, cur = [], None
    for line in lines:
        if _CHAPTER.match(line):
            if cur is not None:
                chapters.append(cur)
            cur = []
        elif cur is not None and not _VOLUME.match(line) and not _ENDING.match(line):
            cur.append(line)
    chapters.append(cur)
    return [paragraphs_of(c) for c in chapters]


def split_chapter(paras: list[str], words_per_doc: int) -> list[str]:
    """Cut a chapter at paragraph ends into about ``round(words / words_per_doc)``
    documents of roughly equal length (none under half the target, except a
    chapter shorter than that)."""
    counts = [len(p.split()) for p in paras]
    total = sum(counts)
    parts_left = max(1, round(total / words_per_doc))
    docs, cur, done, start = [], [], 0, 0
    for p, c in zip(paras, counts):
        cur.append(p)
        done += c
        # share what is left evenly among the parts still to make
        if (
            parts_left > 1
            and done - start >= (total - start) / parts_left
            and total - done >= words_per_doc // 2
        ):
            docs.append("\n\n".join(cur))
            cur, start, parts_left = [], done, parts_left - 1
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def build_documents(novels: dict[str, list[str]], words_per_doc: int):
    docs, stats = [], []
    for name, title, _year in BOOKS:
        chapters = chapters_of(name, novels[name])
        book_docs = [d for ch in chapters for d in split_chapter(ch, words_per_doc)]
        docs.extend(book_docs)
        stats.append((title, len(chapters), len(book_docs), sum(len(d.encode()) for d in book_docs)))
    return docs, stats


# ------------------------------------------------------------------- tokenizer
def train_tokenizer(docs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    if tok.get_vocab_size() != VOCAB_SIZE:
        sys.exit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {VOCAB_SIZE}: too little text?")
    if tok.token_to_id(EOS_TOKEN) != 0:
        sys.exit(f"{EOS_TOKEN} should be id 0, got {tok.token_to_id(EOS_TOKEN)}")
    return tok


# ---------------------------------------------------------------------- output
def source_md(meta: dict, stats, copyright_text: str, words_per_doc: int) -> str:
    rows = "\n".join(
        f"| {title} | {chapters} | {docs} | {nbytes / 1e6:.2f} |" for title, chapters, docs, nbytes in stats
    )
    return f"""# The bundled default corpus

Jane Austen's six completed novels, cleaned, cut into documents and tokenized
with a byte-level BPE tokenizer trained on the same text. `llmpre train` uses it
when no data is given. Regenerated, byte for byte, by `tools/make_default_corpus.py`.

## Source

- Debian package **`{PACKAGE}` {VERSION}** (Debian 12 "bookworm", main, arch all),
  file `{DEB_NAME}`, sha256 `{DEB_SHA256}`,
  at `{DEB_URL_PATH}` on any Debian mirror.
- It packages the CRAN package **janeaustenr 1.0.0** by Julia Silge
  (<https://cran.r-project.org/package=janeaustenr>, <https://github.com/juliasilge/janeaustenr>),
  whose data are the Project Gutenberg texts of the novels, one line per element,
  stored as R objects in `{DATA_DIR}Rdata.rdb` (read here without R).

## Licence

- The novels (1811-1817) are in the **public domain**.
- The packaging (janeaustenr and its Debian packaging) is under the **MIT licence**;
  its notice, from `{COPYRIGHT}` in the package, is reproduced below.

```
{copyright_text.rstrip()}
```

## What was extracted

From each novel: the chapters only. Dropped: title pages and front matter
(including Northanger Abbey's "Advertisement by the Authoress"), chapter and volume
headings, editors' notes ("[At this point in the first and second editions...]",
"[End volume one of this edition...]", Northanger Abbey's closing
"A NOTE ON THE TEXT"), "THE END"/"FINIS", scene-break asterisks, and the underscores
Project Gutenberg uses for italics. Hard-wrapped lines are joined into paragraphs;
paragraphs are separated by a blank line (`\\n\\n`). Each chapter is cut at paragraph
boundaries into about round(words / {words_per_doc}) documents of equal length.

| novel | chapters | documents | UTF-8 MB |
|---|---|---|---|
{rows}

## The files

| file | content |
|---|---|
| `tokenizer.json` | HF `tokenizers` byte-level BPE (GPT-2 style pre-tokenizer, no prefix space), vocab {meta['vocab_size']}, trained with tokenizers {meta['tokenizers_version']} |
| `corpus.bin` / `corpus.idx` | PaddleNLP/Megatron mmap format, {meta['dtype']}, one item per document, each ending with EOS |
| `meta.json` | the numbers below, machine-readable |

- special tokens: only `{EOS_TOKEN}` = id {meta['eos_token_id']}, the end-of-document
  token, appended to every document here (the tokenizer does not add it by itself); no BOS
- documents: **{meta['num_docs']}**
- tokens: **{meta['num_tokens']}** (including one EOS per document)
- text: {meta['text_bytes']} bytes UTF-8 ({meta['text_bytes'] / 1e6:.2f} MB); {meta['bytes_per_token']:.2f} bytes per token (EOS not counted)

## Regenerate

```
apt-get download {PACKAGE}={VERSION}
RAYON_NUM_THREADS=1 python tools/make_default_corpus.py {DEB_NAME}
```
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("deb", help=f"path to {DEB_NAME} (apt-get download {PACKAGE}={VERSION})")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: the package's assets/default)")
    ap.add_argument("--words-per-doc", type=int, default=1000, help="target document length in words")
    ap.add_argument("--allow-other-version", action="store_true", help="accept a .deb whose sha256 differs")
    args = ap.parse_args(argv)

    # Deterministic tokenizer training: one thread, no parallel merges reordering.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with open(args.deb, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != DEB_SHA256 and not args.allow_other_version:
        sys.exit(f"{args.deb}: sha256 {digest} is not {DEB_NAME}'s {DEB_SHA256}; "
                 "use --allow-other-version to build from it anyway")

    files = read_deb(args.deb)
    data = {k[len(DATA_DIR):]: v for k, v in files.items() if k.startswith(DATA_DIR)}
    objects = read_lazyload_db(data, "Rdata")
    novels = {}
    for name, _title, _year in BOOKS:
        obj = objects[name]
        if not isinstance(obj, RVector) or obj.type != _STR:
            sys.exit(f"{name}: expected a character vector in Rdata.rdb")
        novels[name] = [s or "" for s in obj.value]
    copyright_text = files[COPYRIGHT].decode("utf-8")

    docs, stats = build_documents(novels, args.words_per_doc)
    text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"{len(docs)} documents, {text_bytes / 1e6:.2f} MB of text")

    tok = train_tokenizer(docs)
    eos = tok.token_to_id(EOS_TOKEN)
    encoded = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    for d, ids in zip(docs[:50], encoded[:50]):
        if tok.decode(ids) != d:
            sys.exit("tokenizer does not round-trip the text; refusing to write")

    import tokenizers

    from llmpre.data.writer import CorpusWriter  # the project's venv has llmpre installed

    os.makedirs(args.out, exist_ok=True)
    with CorpusWriter(os.path.join(args.out, "corpus"), np.uint16) as w:
        for ids in encoded:
            w.add_document(np.asarray(ids + [eos], dtype=np.uint16))
    num_tokens = w.num_tokens
    tok.save(os.path.join(args.out, "tokenizer.json"), pretty=False)

    meta = {
        "name": "austen",
        "vocab_size": tok.get_vocab_size(),
        "eos_token_id": eos,
        "eos_token": EOS_TOKEN,
        "bos_token_id": None,
        "num_docs": len(docs),
        "num_tokens": num_tokens,
        "dtype": "uint16",
        "text_bytes": text_bytes,
        "bytes_per_token": round(text_bytes / (num_tokens - len(docs)), 4),
        "tokenizers_version": tokenizers.__version__,
        "source": f"Debian {PACKAGE} {VERSION} (janeaustenr 1.0.0): Jane Austen's six novels, public domain",
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, "SOURCE.md"), "w") as f:
        f.write(source_md(meta, stats, copyright_text, args.words_per_doc))
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
