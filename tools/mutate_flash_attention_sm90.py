"""Planted-bug check of the Hopper flash attention kernels' CPU tests.

Copies the repository (without .git, .venv and build), plants one bug at a
time in cuda/flash_attention/{fwd,bwd}_sm90_kernel.cuh, runs the Hopper
emulator tests of tests/cuda/test_flash_attention_reference.py on the copy and
reports whether they failed (caught) or passed (missed). Each mutant is an
exact text replacement that must match once; a pattern that no longer
matches is reported, so the list is kept in step with the kernels.

    .venv/bin/python tools/mutate_flash_attention_sm90.py [--work DIR] [INDEX ...]

About a minute per mutant on two cores. bench/RESULTS.md quotes its outcome.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FWD = "cuda/flash_attention/fwd_sm90_kernel.cuh"
BWD = "cuda/flash_attention/bwd_sm90_kernel.cuh"
# (what the bug is, file, text, replacement)
MUTANTS = [
 ("fwd: no wait for V", FWD, "      mbar_wait(v_full + cur, cur_par);\n      turn_wait();", "      turn_wait();"),
 ("fwd: K released before S retires", FWD, "      wgmma_wait<1>();  // S(n) done; P V of the previous tile may still run\n      fence_acc(s);\n      if (l == 0) mbar_arrive(k_empty + nxt);", "      if (l == 0) mbar_arrive(k_empty + nxt);\n      wgmma_wait<1>();  // S(n) done; P V of the previous tile may still run\n      fence_acc(s);"),
 ("fwd: full-barrier parity", FWD, "const int nxt = (it + 1) % S, nxt_par = ((it + 1) / S) & 1;", "const int nxt = (it + 1) % S, nxt_par = (it + 1) & 1;"),
 ("fwd: producer empty parity", FWD, "mbar_wait(k_empty + s, par ^ 1);", "mbar_wait(k_empty + s, par);"),
 ("fwd: Q panel stride", FWD, "kmajor_desc(q_addr + uint32_t(kk / 4) * BM * 128", "kmajor_desc(q_addr + uint32_t(kk / 4) * BN * 128"),
 ("fwd: V panel stride (LBO)", FWD, "mnmajor_desc(v_addr + uint32_t(kk) * 16 * 128, BN)", "mnmajor_desc(v_addr + uint32_t(kk) * 16 * 128, 64)"),
 ("fwd: ALiBi sign", FWD, "if (has_alibi) x += slope2 * float(j - pos);", "if (has_alibi) x += slope2 * float(pos - j);"),
 ("fwd: causal off by one", FWD, "const int pos = m0 + row0 + (e >> 1) * 8 + off;", "const int pos = m0 + row0 + (e >> 1) * 8 + off + 1;"),
 ("fwd: rescale row", FWD, "for (int i = 0; i < NO; ++i) o[i] *= corr[(i % 4) / 2];", "for (int i = 0; i < NO; ++i) o[i] *= corr[i % 2];"),
 ("fwd: P fragment order", FWD, "pr[kk][r] = pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);", "pr[kk][r ^ 1] = pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);"),
 ("fwd: no proxy fence before O store", FWD, "  fence_proxy_async();\n  named_bar_sync(kBarFwdStore0 + cw, 128);", "  named_bar_sync(kBarFwdStore0 + cw, 128);"),
 ("fwd: O store rows", FWD, "64 * c, h, m0 + 64 * cw, b);", "64 * c, h, m0, b);"),
 ("fwd: lse without log2 l", FWD, "(row_max[hr] + log2f(lsum)) * kLn2", "(row_max[hr]) * kLn2"),
 ("fwd: no ping-pong hand-over skip", FWD, "if (--phases_left > 0 || cw == 0) named_bar_arrive", "if (--phases_left >= 0 || cw == 0) named_bar_arrive"),
 ("fwd: K tile row offset", FWD, "tma_load_4d(sK + c * BN * 64, &p.tk, 64 * c, hk, n * BN, b, k_full + s);", "tma_load_4d(sK + c * BN * 64, &p.tk, 64 * c, hk, n * BN + 1, b, k_full + s);"),
 ("bwd: dS sign", BWD, "dpt[i] = pv * (dpt[i] - sDs[ci]);", "dpt[i] = pv * (dpt[i] + sDs[ci]);"),
 ("bwd: dV from Q", BWD, "rs<1>(dv, pr[kk], mnmajor_desc(do_addr", "rs<1>(dv, pr[kk], mnmajor_desc(q_addr"),
 ("bwd: dQ panel", BWD, "mnmajor_desc(k_addr + uint32_t(cw) * BN * 128 + uint32_t(kk) * 16 * 128, BN)", "mnmajor_desc(k_addr + uint32_t(kk) * 16 * 128, BN)"),
 ("bwd: no dS-ready barrier", BWD, "      fence_proxy_async();\n      named_bar_sync(kBarDsReady, 256);", "      fence_proxy_async();"),
 ("bwd: Q/dO released before dK/dV retire", BWD, "    wgmma_wait<0>();\n    fence_acc(dv);\n    fence_acc(dk);\n    if (l == 0) {  // Q, dO", "    if (l == 0) {  // Q, dO"),
 ("bwd: dK unscaled", BWD, "pack2<T>(dk[i] * a.scale, dk[i + 1] * a.scale)", "pack2<T>(dk[i], dk[i + 1])"),
 ("bwd: split rows bound", BWD, "      if (n0 + r < a.seq_k) {", "      if (r < a.seq_k) {"),
 ("bwd: dS^T row", BWD, "const int row = key0 + (r & 1) * 8, col = 16 * kk + (r >> 1) * 8 + 2 * t;", "const int row = key0 + (r >> 1) * 8, col = 16 * kk + (r & 1) * 8 + 2 * t;"),
 ("bwd: lse2 stage", BWD, "bulk_load(sm + L::kLse + s * BM * 4, a.lse2 + stat, BM * 4, q_full + s);", "bulk_load(sm + L::kLse, a.lse2 + stat, BM * 4, q_full + s);"),
 ("bwd: no wait for dO", BWD, "    mbar_wait(do_full + s, par);\n    wgmma_fence();", "    wgmma_fence();"),
 ("bwd: query block order", BWD, "const int m0 = walk.m0(it);\n    const uint32_t q_addr", "const int m0 = walk.m0((it + 1) % steps);\n    const uint32_t q_addr"),
 ("bwd: dQ staging reused before the bulk read", BWD, "      if (l == 0) tma_store_wait_read();  // the previous panel has left the staging buffer\n", ""),
 ("bwd: bulk reduction before all stores", BWD, "      fence_proxy_async();\n      named_bar_sync(kBarDq0 + cw, 128);\n      if (l == 0) {", "      fence_proxy_async();\n      if (l == 0) {"),
 ("bwd: dQ tile permutation in convert", BWD, "ld_f32x4(*reinterpret_cast<float(*)[4]>(x + 4), tile + sm90_dq_tile_index(r, c + 4));", "ld_f32x4(*reinterpret_cast<float(*)[4]>(x + 4), tile + sm90_dq_tile_index(r, c) + 4);"),
]


def run_one(work: Path, rel: str, old: str, new: str) -> dict:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", "build", ".git", "runs", "__pycache__"))
    path = work / rel
    text = path.read_text()
    if text.count(old) != 1:
        return {"result": f"pattern found {text.count(old)} times (update the mutant)"}
    path.write_text(text.replace(old, new))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/cuda/test_flash_attention_reference.py", "-k", "hopper or selection"],
                       cwd=work, capture_output=True, text=True, timeout=3000)
    how = [l for l in r.stdout.splitlines() if l.startswith("FAILED") or "EMULATOR ERROR" in l][:2]
    return {"caught": r.returncode != 0, "seconds": round(time.time() - t0), "how": how}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="scratch directory for the copy (default: a temporary one)")
    ap.add_argument("only", nargs="*", type=int, help="mutant indices to run (default: all)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="llmpre-mutants-")) / "repo"
    caught = missed = 0
    for i, (name, rel, old, new) in enumerate(MUTANTS):
        if a.only and i not in a.only:
            continue
        res = run_one(work, rel, old, new)
        caught += bool(res.get("caught"))
        missed += res.get("caught") is False
        print(json.dumps({"index": i, "mutant": name, **res}), flush=True)
    print(f"caught {caught}, missed {missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
