"""CPU tests of what the GPU checks rest on (bench/gpu/harness.py and
check_{rms_norm,rotary,cross_entropy,swiglu,moe_rows,moe_combine,grouped_mlp}.py): storage rounding, the error rule, the
float64 references, and the checks' verdicts on emulated kernels: an ideal
kernel (the truth rounded once) must pass every case, and kernels with
typical bugs must fail. No GPU and no CUDA build are needed.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import check_cross_entropy as cce  # noqa: E402
import check_grouped_mlp as cgm  # noqa: E402
import check_moe_combine as cmc  # noqa: E402
import check_moe_rows as cmr  # noqa: E402
import check_rms_norm as crms  # noqa: E402
import check_rotary as crot  # noqa: E402
import check_swiglu as csw  # noqa: E402
import harness as H  # noqa: E402


# ----------------------------------------------------------------------------- harness
def test_bf16_encoding_rounds_to_nearest_even():
    one = 1.0
    ulp = 2.0 ** -7  # bf16 spacing at 1
    x = np.array([one + ulp / 2, one + 1.5 * ulp, one + 0.3 * ulp, -2.0, 0.0], dtype=np.float32)
    got = H.decode(H.encode(x, "bfloat16"), "bfloat16")
    # ties go to the even mantissa: 1 + ulp/2 -> 1, 1 + 1.5 ulp -> 1 + 2 ulp
    np.testing.assert_array_equal(got, [one, one + 2 * ulp, one, -2.0, 0.0])
    assert H.encode(x, "bfloat16").dtype == np.uint16


@pytest.mark.parametrize("dtype", H.DTYPES)
def test_rounder_matches_storage_roundtrip(dtype):
    x = np.random.default_rng(1).standard_normal((7, 33)).astype(np.float32) * 10
    np.testing.assert_array_equal(H.rounder(dtype)(x), H.decode(H.encode(x, dtype), dtype))
    assert H.rounder(dtype)(x).shape == x.shape


def test_rule_result_verdicts():
    truth = np.array([1.0, -2.0, 3.0])
    naive = truth + np.array([1e-3, 0, 0])
    assert H.rule_result("ok", truth + 1.9e-3, truth, naive)["passed"]
    bad = H.rule_result("bad", truth + np.array([0, 0, 2.1e-3]), truth, naive)
    assert not bad["passed"] and "2 x naive" in bad["why"]
    # a NaN where the truth is finite fails even if the naive result is worse
    assert not H.rule_result("nan", np.array([np.nan, -2, 3]), truth, naive + 1)["passed"]
    # NaN where the truth is NaN (a contract, e.g. a bad label) is required, not forgiven
    t_nan = np.array([np.nan, 1.0])
    assert H.rule_result("nan ok", np.array([np.nan, 1.0]), t_nan, t_nan)["passed"]
    assert not H.rule_result("nan missing", np.array([0.0, 1.0]), t_nan, t_nan)["passed"]
    assert not H.rule_result("shape", truth[:2], truth, naive)["passed"]
    # atol: `ulps` fp32 ulps of max|truth|
    r = H.rule_result("atol", truth, truth, truth, ulps=4)
    assert r["atol"] == pytest.approx(4 * 2.0 ** -23 * 3.0)


def test_hbm_peaks_and_tables(tmp_path):
    assert H.hbm_peak("NVIDIA H100 80GB HBM3")[0] == 3.35e12
    assert H.hbm_peak("NVIDIA H100 PCIe")[0] == 2.0e12
    assert H.hbm_peak("NVIDIA GH200 480GB")[0] == 4.0e12
    assert H.hbm_peak("NVIDIA H200")[0] == 4.8e12
    peak, why = H.hbm_peak("Some GPU")
    assert peak is None and "no peak known" in why
    row = H.bandwidth_row("forward", "bfloat16", "2x3", 3_350_000_000, 1.0, 3.35e12, torch_ms=2.0)
    assert row["gbs"] == pytest.approx(3350.0) and row["pct_peak"] == pytest.approx(100.0)
    assert row["speedup"] == pytest.approx(2.0)
    md = H.bandwidth_markdown("T", "dev", "peak", [row], "b.", "t.")
    assert "| forward | bfloat16 | 2x3 |" in md and "2.00x" in md
    H.write_json(str(tmp_path / "r.json"), {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ----------------------------------------------------------------------------- RMSNorm
RMS_CASES = [(7, 40, "bfloat16"), (5, 257, "float32"), (6, 130, "float16"), (0, 64, "bfloat16")]


def test_rms_norm_truth_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, w, g = rng.standard_normal((3, 9)), rng.standard_normal(9), rng.standard_normal((3, 9))
    t = crms.truth(x, w, g, 1e-6)
    loss = lambda x_, w_: float((crms.truth(x_, w_, g, 1e-6)["y"] * g).sum())  # noqa: E731
    h = 1e-6
    i, j = 1, 4
    e = np.zeros_like(x)
    e[i, j] = h
    assert (loss(x + e, w) - loss(x - e, w)) / (2 * h) == pytest.approx(t["dx"][i, j], rel=1e-6)
    ew = np.zeros_like(w)
    ew[j] = h
    assert (loss(x, w + ew) - loss(x, w - ew)) / (2 * h) == pytest.approx(t["dweight"][j], rel=1e-6)
    np.testing.assert_allclose(t["inv_rms"], 1 / np.sqrt((x * x).mean(-1) + 1e-6))


@pytest.mark.parametrize("case", RMS_CASES)
def test_rms_norm_ideal_kernel_passes(case):
    r = crms.check_case(crms.rounded_truth_kernel, *case)
    assert r["passed"], r


def _rms_bug(kind):
    def kernel(x, w, g, eps, dtype, shift=0):
        out = crms.rounded_truth_kernel(x, w, g, eps, dtype)
        rd = H.rounder(dtype)
        if kind == "tail":        # the last element left out of sum(x^2)
            r = 1 / np.sqrt((x[:, :-1] ** 2).sum(-1, keepdims=True) / x.shape[1] + eps)
            out["y"] = rd(w * x * r)
        elif kind == "dx_no_weight":
            t = crms.truth(x, np.ones_like(w), g, eps)
            out["dx"] = rd(t["dx"])
        elif kind == "dweight_half_rows":  # a CTA's partial sum lost
            out["dweight"] = rd(crms.truth(x[: len(x) // 2], w, g[: len(x) // 2], eps)["dweight"])
        elif kind == "inv_rms_squared":
            out["inv_rms"] = out["inv_rms"] ** 2
        return out
    return kernel


@pytest.mark.parametrize("kind,dtype", [("tail", "float32"), ("dx_no_weight", "bfloat16"),
                                        ("dweight_half_rows", "float16"), ("inv_rms_squared", "bfloat16")])
def test_rms_norm_check_catches_bugs(kind, dtype):
    r = crms.check_case(_rms_bug(kind), 6, 257, dtype)
    assert not r["passed"]


def test_rms_norm_naive_itself_passes_the_rule():
    # err(naive) <= 2 err(naive): the rule accepts a kernel exactly as accurate as the naive one
    def naive_kernel(x, w, g, eps, dtype, shift=0):
        return crms.naive(x, w, g, eps, dtype)
    assert crms.check_case(naive_kernel, 5, 100, "bfloat16")["passed"]


def test_rms_norm_run_writes_a_report(tmp_path):
    out = crms.run(str(tmp_path), kernel=crms.rounded_truth_kernel, cases=RMS_CASES[:2])
    assert out["passed"] and out["cases"] == 2
    assert json.loads((tmp_path / "check_rms_norm.json").read_text())["passed"] is True
    out = crms.run(str(tmp_path), kernel=_rms_bug("tail"), cases=[(4, 64, "float32", 0)])
    assert not out["passed"] and out["failures"][0]["results"][0]["name"] == "y"


# ----------------------------------------------------------------------------- RoPE
ROTARY_CASES = [crot.Case(2, 9, 3, 1, 16, 16, False, "none", "bfloat16"),
                crot.Case(1, 7, 2, 2, 12, 8, True, "batch", "float32"),
                crot.Case(2, 5, 2, 0, 10, 6, False, "shared", "float16"),
                crot.Case(2, 6, 2, 1, 8, 8, True, "bad", "bfloat16")]


def test_rotary_truth_is_a_rotation():
    rng = np.random.default_rng(0)
    c = crot.Case(2, 5, 3, 1, 8, 8, False, "batch", "float32")
    inp = crot.make_inputs(rng, c)
    t = crot.truth(inp, False)
    # norms are kept and the inverse undoes the forward, up to the fp32 tables'
    # rounding: cos^2 + sin^2 = 1 within a few 2^-24
    tol = 4 * 2.0 ** -24
    np.testing.assert_allclose(np.linalg.norm(t["q"], axis=-1), np.linalg.norm(inp["q"], axis=-1), rtol=tol)
    cc, ss = crot.table_rows_for(inp["cos"], inp["sin"], c.seq, inp["ids"])
    np.testing.assert_allclose(crot.rotate(t["q"], cc, -ss, False), inp["q"], rtol=2 * tol, atol=1e-12)
    # rotate_half pairs (i, i + r/2): the first feature of a head at position p
    b, s, h = 1, 3, 2
    p = inp["ids"][b, s]
    a0, b0 = inp["q"][b, s, h, 0], inp["q"][b, s, h, 4]
    assert t["q"][b, s, h, 0] == pytest.approx(a0 * inp["cos"][p, 0] - b0 * inp["sin"][p, 0])


@pytest.mark.parametrize("case", ROTARY_CASES, ids=lambda c: c.label())
def test_rotary_ideal_kernel_passes(case):
    r = crot.check_case(crot.rounded_truth_kernel, case)
    assert r["passed"], r


def _rotary_bug(kind):
    def kernel(inp, c):
        if kind == "inverse_sign":       # the backward rotates forward again
            t = crot.truth({**inp, "gq": inp["gq"], "gk": inp["gk"]}, c.interleaved)
            cc, ss = crot.table_rows_for(inp["cos"], inp["sin"], c.seq, inp["ids"])
            t["dq"] = crot.rotate(inp["gq"], cc, ss, c.interleaved)
        elif kind == "layout":           # interleaved pairs treated as rotate_half
            t = crot.truth(inp, not c.interleaved)
        elif kind == "tail_zeroed":      # pass-through features not copied
            t = crot.truth(inp, c.interleaved)
            t["q"][..., c.rot_dim:] = 0
        elif kind == "ids_ignored":
            t = crot.truth({**inp, "ids": None}, c.interleaved)
        elif kind == "bad_clamped":      # out-of-range positions clamped instead of NaN
            ids = np.clip(inp["ids"], 0, inp["cos"].shape[0] - 1)
            t = crot.truth({**inp, "ids": ids}, c.interleaved)
        return {k: H.rounder(c.dtype)(v) for k, v in t.items()}
    return kernel


@pytest.mark.parametrize("kind,case", [
    ("inverse_sign", crot.Case(1, 6, 2, 1, 8, 8, False, "none", "bfloat16")),
    ("layout", crot.Case(1, 6, 2, 1, 8, 8, True, "none", "bfloat16")),
    ("tail_zeroed", crot.Case(1, 6, 2, 1, 12, 8, False, "none", "float16")),
    ("ids_ignored", crot.Case(2, 6, 2, 1, 8, 8, False, "batch", "float32")),
    ("bad_clamped", crot.Case(2, 6, 2, 1, 8, 8, False, "bad", "bfloat16")),
])
def test_rotary_check_catches_bugs(kind, case):
    assert not crot.check_case(_rotary_bug(kind), case)["passed"]


# ----------------------------------------------------------------------------- cross-entropy
CE_CASES = [(9, 300, "bfloat16"), (7, 61, "float32"), (6, 50, "float16"), (5, 7, "bfloat16"), (0, 10, "float32")]


def test_cross_entropy_truth_matches_finite_differences():
    rng = np.random.default_rng(0)
    inp = cce.make_inputs(rng, 6, 11, "float32", bad_label=False)
    t = cce.truth(inp)
    keep = inp["labels"] != cce.IGNORE

    def loss(x):
        return float((cce.truth({**inp, "logits": x})["loss"] * inp["dloss"])[keep].sum())

    i = int(np.flatnonzero(keep)[1])
    for j in (0, int(inp["labels"][i])):
        e = np.zeros_like(inp["logits"])
        e[i, j] = 1e-6
        fd = (loss(inp["logits"] + e) - loss(inp["logits"] - e)) / 2e-6
        assert fd == pytest.approx(t["dlogits"][i, j], rel=1e-5, abs=1e-9)
    assert np.all(t["loss"][~keep] == 0) and np.all(t["dlogits"][~keep] == 0)


@pytest.mark.parametrize("case", CE_CASES)
def test_cross_entropy_ideal_kernel_passes(case):
    r = cce.check_case(cce.rounded_truth_kernel, *case)
    assert r["passed"], r


def _ce_bug(kind):
    def kernel(inp, dtype, shifts=(0, 0)):
        labels = inp["labels"].copy()
        if kind == "label_off_by_one":
            keep = (labels != cce.IGNORE) & (labels >= 0) & (labels < inp["logits"].shape[1] - 1)
            labels[keep] += 1
        if kind == "ignore_not_ignored":
            labels[labels == cce.IGNORE] = 0
        out = cce.rounded_truth_kernel({**inp, "labels": labels}, dtype)
        if kind == "no_onehot":
            t = cce.truth(inp)
            x = inp["logits"]
            m = x.max(-1, keepdims=True)
            p = np.exp(x - m) / np.exp(x - m).sum(-1, keepdims=True)
            out["dlogits"] = H.rounder(dtype)(np.where(np.isnan(t["dlogits"]), np.nan,
                                                       np.where(t["dlogits"] == 0, 0, p * inp["dloss"][:, None])))
        if kind == "stats_as_lse":
            out["stats"][:, 1] += out["stats"][:, 0]
        if kind == "bad_label_not_nan":
            out["loss"] = np.nan_to_num(out["loss"])
        if kind == "loss_1e-5":
            out["loss"] = out["loss"] * (1 + 1e-5)
        return out
    return kernel


@pytest.mark.parametrize("kind,dtype", [("label_off_by_one", "bfloat16"), ("ignore_not_ignored", "float16"),
                                        ("no_onehot", "bfloat16"), ("stats_as_lse", "float32"),
                                        ("bad_label_not_nan", "bfloat16"), ("loss_1e-5", "float32")])
def test_cross_entropy_check_catches_bugs(kind, dtype):
    assert not cce.check_case(_ce_bug(kind), 9, 300, dtype)["passed"]


# ----------------------------------------------------------------------------- swiglu
def test_swiglu_truth_matches_finite_differences():
    rng = np.random.default_rng(5)
    g, u, d = rng.standard_normal(9) * 3, rng.standard_normal(9), rng.standard_normal(9)
    t = csw.truth({"gate": g, "up": u, "dout": d})
    f = lambda g_, u_: csw.truth({"gate": g_, "up": u_, "dout": d})["out"]  # noqa: E731
    h = 1e-6
    np.testing.assert_allclose(t["dgate"], d * (f(g + h, u) - f(g - h, u)) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(t["dup"], d * (f(g, u + h) - f(g, u - h)) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", csw.CASES, ids=lambda c: c.label())
def test_swiglu_ideal_kernel_passes(case):
    r = csw.check_case(csw.rounded_truth_kernel, case)
    assert r["passed"], r


def _swiglu_bug(kind):
    def kernel(inp, c):
        out = csw.rounded_truth_kernel(inp, c)
        if kind == "tail":                # the element-wise tail never written
            out["out"][-3:] = np.nan
        elif kind == "dgate_no_chain":    # dgate = dout * up * sigmoid(g): silu's derivative half missing
            g = inp["gate"]
            out["dgate"] = H.rounder(c.dtype)(inp["dout"] * inp["up"] / (1 + np.exp(-g)))
        elif kind == "swapped":           # dgate and dup swapped
            out["dgate"], out["dup"] = out["dup"], out["dgate"]
        return out
    return kernel


@pytest.mark.parametrize("kind", ["tail", "dgate_no_chain", "swapped"])
def test_swiglu_check_catches_bugs(kind):
    assert not csw.check_case(_swiglu_bug(kind), csw.Case(37, "bfloat16"))["passed"]


# ----------------------------------------------------------------------------- moe rows
@pytest.mark.parametrize("case", cmr.CASES, ids=lambda c: c.label())
def test_moe_rows_ideal_kernel_passes(case):
    r = cmr.check_case(cmr.rounded_truth_kernel, case)
    assert r["passed"], r


def test_moe_rows_inputs_are_a_routing():
    c = cmr.Case(30, 4, 8, "float32")
    inp = cmr.make_inputs(np.random.default_rng(0), c)
    index, perm, starts = inp["index"], inp["perm"], inp["starts"]
    assert starts[0] == 0 and starts[-1] == index.size and np.all(np.diff(starts) >= 0)
    assert starts[2] == starts[1]                                  # token 1 has no rows
    for t in range(c.tokens):                                      # perm lists each token's rows in row order
        rows = perm[starts[t]:starts[t + 1]]
        assert np.all(index[rows] == t) and np.all(np.diff(rows) > 0)


def _moe_rows_bug(kind):
    def kernel(inp, c):
        out = cmr.rounded_truth_kernel(inp, c)
        if kind == "last_row_dropped":    # the loop stops one row short
            starts = inp["starts"].copy()
            starts[1:] = np.maximum(starts[1:] - 1, starts[:-1])
            out["summed"] = H.rounder(c.dtype)(cmr._segment_sum(inp["drows"], inp["perm"], starts, lambda a: a,
                                                               np.float64))
        elif kind == "bad_clamped":       # an out-of-range index clamped instead of a NaN row
            out["gathered"] = np.asarray(inp["src"])[np.clip(inp["index"], 0, c.tokens - 1)]
        elif kind == "starts_upper_bound":  # the first id > t instead of >= t
            out["starts"] = np.searchsorted(np.sort(inp["index"]), np.arange(c.tokens + 1), side="right")
        elif kind == "second_chunk_lost":  # only the first 256 pointers written
            out["pointers"][256:] = np.uint64(0xFFFFFFFFFFFFFFFF)
        elif kind == "empty_unwritten":   # tokens without rows left as they were (NaN fill)
            empty = inp["starts"][1:] == inp["starts"][:-1]
            out["summed"][empty] = np.nan
        return out
    return kernel


@pytest.mark.parametrize("kind,case", [("last_row_dropped", cmr.Case(20, 4, 16, "bfloat16")),
                                       ("bad_clamped", cmr.Case(20, 3, 32, "float32", bad=True)),
                                       ("empty_unwritten", cmr.Case(20, 4, 16, "float32")),
                                       ("starts_upper_bound", cmr.Case(20, 4, 16, "float32")),
                                       ("second_chunk_lost", cmr.Case(20, 4, 16, "float32"))])
def test_moe_rows_check_catches_bugs(kind, case):
    assert not cmr.check_case(_moe_rows_bug(kind), case)["passed"]


# ----------------------------------------------------------------------------- grouped expert MLP
GM_SMALL = [cgm.Case(24, 2, 16, 8, 4), cgm.Case(16, 0, 16, 8, 3), cgm.Case(30, 3, 16, 8, 6, dropped=7, empty=2)]


def test_grouped_mlp_truth_matches_finite_differences():
    c = GM_SMALL[0]
    inp = cgm.make_inputs(np.random.default_rng(3), c)
    t = cgm.truth(inp)
    loss = lambda d: float(np.sum(cgm.truth(d)["out"] * inp["dout"]))  # noqa: E731
    h = 1e-6
    for key, pick in (("x", (5, 3)), ("wg", (2, 4, 1)), ("wu", (3, 0, 7)), ("wd", (1, 2, 5))):
        plus, minus = ({**inp, key: [w.copy() for w in inp[key]] if key != "x" else inp["x"].copy()} for _ in range(2))
        if key == "x":
            plus["x"][pick] += h
            minus["x"][pick] -= h
            want = t["dx"][pick]
        else:
            e, i, j = pick
            plus[key][e][i, j] += h
            minus[key][e][i, j] -= h
            want = t["d" + key][e][i, j]
        assert (loss(plus) - loss(minus)) / (2 * h) == pytest.approx(want, rel=1e-5, abs=1e-8), key


@pytest.mark.parametrize("case", GM_SMALL, ids=lambda c: c.label())
def test_grouped_mlp_ideal_and_naive_kernels_pass(case):
    assert cgm.check_case(cgm.rounded_truth_kernel, case)["passed"]
    assert cgm.check_case(lambda inp, c: cgm.naive(inp), case)["passed"]


def _grouped_mlp_bug(kind):
    def kernel(inp, c):
        out = cgm.rounded_truth_kernel(inp, c)
        if kind == "empty_expert_unwritten":   # an expert without rows keeps its NaN-filled gradient
            out["dwg"][0] = np.full_like(out["dwg"][0], np.nan)
        elif kind == "da_without_up":           # the input gradient misses dup @ WUp^T
            out["dx"] = cgm.rounded_truth_kernel({**inp, "wu": [w * 0 for w in inp["wu"]]}, c)["dx"]
        elif kind == "first_row_only":          # each token keeps one row's gradient, not their sum
            first = {}
            t = cgm.truth(inp)
            for r, tok in enumerate(inp["index"]):
                first.setdefault(tok, r)
            da = cgm.truth({**inp, "index": None, "x": inp["x"][inp["index"]]})["dx"]
            dx = np.zeros_like(t["dx"])
            for tok, r in first.items():
                dx[tok] = da[r]
            out["dx"] = dx
        elif kind == "dropped_rows_kept":        # rows past offsets[E] computed by the last expert
            last = inp["offsets"].copy()
            last[-1] = inp["dout"].shape[0]
            out["out"] = cgm.rounded_truth_kernel({**inp, "offsets": last}, c)["out"]
        return out
    return kernel


@pytest.mark.parametrize("kind,case", [("empty_expert_unwritten", GM_SMALL[0]), ("da_without_up", GM_SMALL[1]),
                                       ("first_row_only", GM_SMALL[0]), ("dropped_rows_kept", GM_SMALL[2])])
def test_grouped_mlp_check_catches_bugs(kind, case):
    assert not cgm.check_case(_grouped_mlp_bug(kind), case)["passed"]


# ----------------------------------------------------------------------------- moe combine
def test_moe_combine_truth_matches_finite_differences():
    c = cmc.Case(7, 3, 25, 6, "float32")
    inp = cmc.make_inputs(np.random.default_rng(4), c)
    t = cmc.truth(inp)
    loss = lambda d: float(np.sum(cmc.truth(d)["out"] * inp["dout"]))  # noqa: E731
    h = 1e-6
    read = int(inp["pos"][2, 1])
    unread = int(np.setdiff1d(np.arange(c.rows), inp["pos"].reshape(-1))[0])
    for key, pick in (("y", (read, 4)), ("y", (unread, 0)), ("w", (5, 2))):
        plus, minus = ({**inp, key: inp[key].copy()} for _ in range(2))
        plus[key][pick] += h
        minus[key][pick] -= h
        want = t["dy" if key == "y" else "dw"][pick]
        assert (loss(plus) - loss(minus)) / (2 * h) == pytest.approx(want, rel=1e-6, abs=1e-9), (key, pick)
    assert not t["dy"][unread].any()


def test_moe_combine_inputs():
    c = cmc.Case(20, 4, 100, 8, "float32", bad=True)
    pos = cmc.make_inputs(np.random.default_rng(0), c)["pos"]
    ok = pos[(pos >= 0) & (pos < c.rows)]
    assert np.unique(ok).size == ok.size                                 # distinct rows
    assert set(pos[0, :3]) == {0, c.rows - 1, c.rows // 2}               # token 0's rows far apart
    assert pos[1, 0] < 0 and pos[2, -1] >= c.rows                        # the bad positions
    assert c.rows - ok.size > 0                                          # rows no pair reads


@pytest.mark.parametrize("case", cmc.CASES, ids=lambda c: c.label())
def test_moe_combine_ideal_kernel_passes(case):
    r = cmc.check_case(cmc.rounded_truth_kernel, case)
    assert r["passed"], r


def test_moe_combine_naive_itself_passes_the_rule():
    for case in (cmc.CASES[0], cmc.CASES[3]):
        assert cmc.check_case(lambda inp, c: cmc.naive(inp, c.dtype), case)["passed"]


def _moe_combine_bug(kind):
    def kernel(inp, c):
        out = cmc.rounded_truth_kernel(inp, c)
        pos = inp["pos"]
        if kind == "unread_rows_unwritten":   # dy not zeroed first: rows no pair reads keep the NaN fill
            unread = np.setdiff1d(np.arange(c.rows), pos.reshape(-1))
            out["dy"][unread] = np.nan
        elif kind == "last_slot_dropped":      # the slot loop stops one short
            w = inp["w"].copy()
            w[:, -1] = 0
            out["out"] = cmc.rounded_truth_kernel({**inp, "w": w}, c)["out"]
        elif kind == "dw_from_dy_row":          # dw dotted with the row's own gradient instead of y
            t = cmc.truth(inp)
            out["dw"] = np.asarray(np.einsum("th,tjh->tj", inp["dout"], t["dy"][pos]), np.float32)
        elif kind == "bad_clamped":             # an out-of-range position clamped instead of NaN
            clamped = np.clip(pos, 0, c.rows - 1)
            out = cmc.rounded_truth_kernel({**inp, "pos": clamped}, c)
        return out
    return kernel


@pytest.mark.parametrize("kind,case", [("unread_rows_unwritten", cmc.Case(37, 3, 120, 20, "float32")),
                                       ("last_slot_dropped", cmc.Case(30, 4, 150, 64, "bfloat16")),
                                       ("dw_from_dy_row", cmc.Case(23, 4, 92, 33, "float32")),
                                       ("bad_clamped", cmc.Case(20, 3, 70, 32, "float32", bad=True))])
def test_moe_combine_check_catches_bugs(kind, case):
    assert not cmc.check_case(_moe_combine_bug(kind), case)["passed"]


def test_check_modules_import_without_a_gpu():
    # run_all.py imports every check/bench module; none may need the device at import
    for name in ("check_rms_norm", "check_rotary", "check_cross_entropy", "check_swiglu", "check_moe_rows", "check_moe_combine", "check_grouped_mlp",
                 "bench_rms_norm", "bench_rotary", "bench_cross_entropy"):
        assert os.path.exists(ROOT / "bench" / "gpu" / f"{name}.py")
        __import__(name)
