"""`llmpre data preprocess`: JSON lines -> a PaddleNLP-compatible corpus."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from llmpre._core import DataError
from llmpre.cli import main
from llmpre.data import open_corpus
from llmpre.data.default import default_tokenizer_path
from llmpre.data.preprocess import preprocess
from llmpre.data.text import load_tokenizer, remove_repeated_chars, split_sentences
from llmpre.data.writer import write_corpus

TOK = default_tokenizer_path()  # bundled byte-level BPE, 8192 ids, <|endoftext|> = 0
TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
    "  Mr. Darcy walked off. Elizabeth remained with no very cordial feelings toward him!  ",
    "The family of Dashwood had long been settled in Sussex.",
] * 5


def write_jsonl(path, texts, key="text", extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({key: t, "meta": 1}) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(path)


def expected_docs(texts, eos=None):
    """What PaddleNLP writes: strip, tokenize without special tokens, append EOS."""
    tok, _ = load_tokenizer(TOK)
    out = []
    for t in texts:
        ids = tok.encode(t.strip(), add_special_tokens=False).ids
        out.append(ids + ([eos] if eos is not None else []))
    return out


def corpus_docs(prefix):
    c = open_corpus(prefix)
    doc_idx = np.asarray(c.doc_idx)
    return [np.concatenate([c.read(i) for i in range(doc_idx[d], doc_idx[d + 1])]).tolist()
            for d in range(c.num_docs)]


def test_documents_match_a_plain_tokenizer_loop_and_the_writer(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    stats = preprocess(src, TOK, str(tmp_path / "out"), append_eos=True, progress=False)
    want = expected_docs(TEXTS, eos=0)
    assert corpus_docs(str(tmp_path / "out")) == want
    assert (stats.documents, stats.tokens, stats.dtype, stats.eos_id) == (
        len(TEXTS), sum(map(len, want)), "uint16", 0)
    # byte-identical to writing the same documents with the corpus writer
    write_corpus(tmp_path / "ref", want, np.uint16)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"out{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_workers_do_not_change_the_output(tmp_path):
    texts = [f"Document number {i}. " + TEXTS[i % 4] * (1 + i % 3) for i in range(700)]
    src = write_jsonl(tmp_path / "in.jsonl", texts, extra_lines=["{broken", ""])
    outs = []
    for workers in (1, 2, 3):
        prefix = str(tmp_path / f"w{workers}")
        stats = preprocess(src, TOK, prefix, workers=workers, append_eos=True, progress=False)
        assert stats.documents == 700 and stats.bad == {"invalid JSON": 1}
        outs.append(((tmp_path / f"w{workers}.bin").read_bytes(), (tmp_path / f"w{workers}.idx").read_bytes()))
    assert outs[0] == outs[1] == outs[2]


def test_zst_and_directory_inputs_in_sorted_order(tmp_path):
    import zstandard

    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "b.jsonl", TEXTS[1:2])
    raw = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[2:4]).encode()
    (d / "sub" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    write_jsonl(d / "a.jsonl", TEXTS[0:1])
    (d / "notes.txt").write_text("ignored")
    stats = preprocess(str(d), TOK, str(tmp_path / "out"), progress=False)
    assert corpus_docs(str(tmp_path / "out")) == expected_docs(TEXTS[0:4])  # a, b, sub/c
    assert stats.files == 3 and stats.skipped_files == [str(d / "notes.txt")]
    one = preprocess(str(d / "sub" / "c.jsonl.zst"), TOK, str(tmp_path / "z"), progress=False)
    assert one.documents == 2


def test_bad_lines_are_counted_or_fatal_with_strict(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS[:3], extra_lines=[
        "not json", json.dumps({"body": "x"}), json.dumps({"text": "   "}),
        json.dumps({"text": 5}), json.dumps([1, 2]), "", json.dumps({"text": TEXTS[3]})])
    stats = preprocess(src, TOK, str(tmp_path / "out"), progress=False)
    assert stats.documents == 4 and stats.lines == 9
    assert stats.bad == {"invalid JSON": 1, "no 'text' key": 2, "empty text": 1,
                         "'text' is not a string": 1}
    assert stats.first_bad["invalid JSON"] == f"{src}:4"
    assert "skipped 2 line(s): no 'text' key" in stats.summary()
    with pytest.raises(DataError, match=rf"{src}:4: invalid JSON"):
        preprocess(src, TOK, str(tmp_path / "strict"), strict=True, progress=False)
    assert not list(tmp_path.glob("strict*")) and not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_json_key_max_doc_num_and_repeated_chars(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["a" * 150 + " end.", "x" * 100 + " keep.", "third"],
                      key="content")
    preprocess(src, TOK, str(tmp_path / "o"), json_key="content", max_doc_num=2, progress=False)
    docs = corpus_docs(str(tmp_path / "o"))
    assert docs == expected_docs(["a end.", "x" * 100 + " keep."])
    preprocess(src, TOK, str(tmp_path / "off"), json_key="content", max_repeated_len=0, progress=False)
    assert corpus_docs(str(tmp_path / "off"))[0] == expected_docs(["a" * 150 + " end."])[0]
    assert remove_repeated_chars("ab" + "c" * 101 + "d", 100) == "abcd"
    assert remove_repeated_chars("c" * 100, 100) == "c" * 100


def test_split_sentences_one_item_per_sentence(tmp_path):
    text = 'Mr. Bennet was silent. "Is it true?" she asked! Dr. J. Smith arrived at 5 p.m. Then e.g. tea.\n\nNew paragraph'
    assert split_sentences(text) == ["Mr. Bennet was silent.", '"Is it true?" she asked!',
                                     "Dr. J. Smith arrived at 5 p.m. Then e.g. tea.", "New paragraph"]
    src = write_jsonl(tmp_path / "in.jsonl", [text])
    preprocess(src, TOK, str(tmp_path / "s"), split=True, append_eos=True, progress=False)
    c = open_corpus(str(tmp_path / "s"))
    assert (c.num_docs, c.num_items) == (1, 4)
    items = [c.read(i).tolist() for i in range(4)]
    want = expected_docs(split_sentences(text))
    want[-1] = want[-1] + [0]  # EOS on the document's last item only
    assert items == want


def make_word_tokenizer(directory, vocab_size, eos=None, config_eos=None):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    if eos:
        vocab[eos] = vocab_size
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    if config_eos:
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump({"eos_token": {"content": config_eos}}, f)
    return str(directory)


def test_large_vocabulary_writes_int32_and_eos_from_config(tmp_path):
    tok_dir = make_word_tokenizer(tmp_path / "tok", 70000, eos="<|im_end|>", config_eos="<|im_end|>")
    src = write_jsonl(tmp_path / "in.jsonl", ["w1 w69000 w5", "w2"])
    stats = preprocess(src, tok_dir, str(tmp_path / "o"), append_eos=True, progress=False)
    c = open_corpus(str(tmp_path / "o"))
    assert c.dtype == "int32" and stats.eos_id == 70000
    assert corpus_docs(str(tmp_path / "o")) == [[1, 69000, 5, 70000], [2, 70000]]


def test_eos_detection_and_errors(tmp_path):
    assert load_tokenizer(TOK)[1].eos_id == 0
    plain = make_word_tokenizer(tmp_path / "plain", 100)
    assert load_tokenizer(plain)[1].eos_id is None
    src = write_jsonl(tmp_path / "in.jsonl", ["w1 w2"])
    with pytest.raises(DataError, match="--eos-token"):
        preprocess(src, plain, str(tmp_path / "o"), append_eos=True, progress=False)
    preprocess(src, plain, str(tmp_path / "o"), append_eos=True, eos_token="w7", progress=False)
    assert corpus_docs(str(tmp_path / "o")) == [[1, 2, 7]]
    preprocess(src, plain, str(tmp_path / "o"), append_eos=True, eos_token="42", progress=False)
    assert corpus_docs(str(tmp_path / "o")) == [[1, 2, 42]]
    with pytest.raises(DataError, match="no such token"):
        load_tokenizer(plain, "<nope>")
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(DataError, match="no such file"):
        load_tokenizer("meta-llama/Llama-2-7b")
    (tmp_path / "in.txt").write_text("x")
    with pytest.raises(DataError, match="expected a .jsonl"):
        preprocess(str(tmp_path / "in.txt"), plain, str(tmp_path / "o"), progress=False)
    empty = write_jsonl(tmp_path / "empty.jsonl", [" "])
    with pytest.raises(DataError, match="nothing written"):
        preprocess(empty, plain, str(tmp_path / "e"), progress=False)


def test_cli_preprocess_reports_and_progress(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS, extra_lines=["oops"])
    r = CliRunner().invoke(main, ["data", "preprocess", "--input", src, "--tokenizer", TOK,
                                  "--output-prefix", str(tmp_path / "o"), "--append-eos",
                                  "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "20 documents" in r.output and "skipped 1 line(s): invalid JSON" in r.output
    assert "MB/s" in r.output
    r = CliRunner().invoke(main, ["data", "preprocess", "--input", src, "--tokenizer", TOK,
                                  "--output-prefix", str(tmp_path / "s"), "--strict", "--quiet"])
    assert r.exit_code == 2 and f"{src}:21: invalid JSON" in r.output


def _run_with_deadline(fn, seconds):
    """fn() in a thread; the test fails (instead of hanging the suite) if it does not return."""
    import threading

    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"preprocess did not return within {seconds} s (a worker hung?)"
    return out


def test_workers_start_fresh_and_a_failed_run_stops_them_without_hanging(tmp_path):
    """Workers are not forks of this process: with Paddle loaded here (its signal handlers
    allocate), a forked worker stopped by a signal while inside malloc deadlocked, and the run
    with it. A --strict run that fails at once stops its pool while the workers are still
    starting, the moment that used to hang."""
    import paddle  # noqa: F401 - the parent a trainer or this test suite really is

    src = write_jsonl(tmp_path / "in.jsonl", TEXTS, extra_lines=["oops"])
    for i in range(8):
        out = _run_with_deadline(lambda: preprocess(src, TOK, str(tmp_path / f"s{i}"), workers=2,
                                                    strict=True, progress=False), 120)
        assert isinstance(out.get("error"), DataError) and ":21: invalid JSON" in str(out["error"])
        assert not list(tmp_path.glob(f"s{i}*")), "a failed run left files behind"
    out = _run_with_deadline(lambda: preprocess(src, TOK, str(tmp_path / "ok"), workers=2,
                                                progress=False), 120)
    assert "error" not in out and out["value"].documents == 20


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the worker processes in /proc (Linux)")
def test_a_killed_worker_is_one_clear_error_not_a_hang(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    src = write_jsonl(tmp_path / "big.jsonl", TEXTS * 4000)  # 80k lines: several seconds of work
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "llmpre.cli", "data", "preprocess", "--input", src,
                             "--tokenizer", TOK, "--output-prefix", str(out), "--workers", "2",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            # the forkserver is a child of the CLI; the workers are its children
            workers = [p for p in _descendants(proc.pid) if p not in _children_of(proc.pid)]
            if workers:
                break
            time.sleep(0.05)
        assert workers, "no worker process appeared"
        time.sleep(0.3)
        os.kill(workers[0], signal.SIGKILL)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, text
    assert "tokenizer worker process died" in text and "fewer --workers" in text, text
    assert "Traceback" not in text, text
    assert not list(tmp_path.glob("o*")), "a failed run left files behind"


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
