// Self-test of the Hopper emulator (emu_sm90.h), run by
// tests/cuda/test_flash_attention_emulator.py:
//
//   selftest_sm90 <scenario>
//
// "gemm" runs small kernels written against arch_sm90.cuh (TMA loads with
// the 128-byte swizzle, wgmma with both operands K-major, both M/N-major, and
// A from registers) and compares every accumulator with a host product:
// exit 0 and "ok". Every other scenario commits one usage error the
// emulator must report (exit 3, "EMULATOR ERROR: ..." on stderr), so the
// checks the kernels rely on are shown to fire.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "flash_attention/arch_sm90.cuh"

namespace fa = llmpre::cuda::fa;
namespace emu = llmpre::cuda::fa::emu;

namespace {

constexpr int M = 64, N = 64, K = 64;  // one warpgroup: D[64 x 64] = A[64 x 64] B[64 x 64]

struct Mats {
  std::vector<uint16_t> a, b;  // a: [M][K] (row-major), b: [K][N] and its transpose bt: [N][K]
  std::vector<uint16_t> bt, at;
  std::vector<double> want;    // [M][N]
};

Mats make_mats() {
  Mats m;
  m.a.resize(M * K);
  m.at.resize(M * K);
  m.b.resize(K * N);
  m.bt.resize(K * N);
  m.want.assign(M * N, 0.0);
  unsigned s = 12345;
  auto rnd = [&] {
    s = s * 1103515245u + 12345u;
    return float(int((s >> 16) % 17) - 8) / 8.f;  // exact in bf16
  };
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) {
      m.a[i * K + k] = emu::f32_to_bf16(rnd());
      m.at[k * M + i] = m.a[i * K + k];
    }
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) {
      m.b[k * N + j] = emu::f32_to_bf16(rnd());
      m.bt[j * K + k] = m.b[k * N + j];
    }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j)
      for (int k = 0; k < K; ++k) m.want[i * N + j] += double(emu::bf16_to_f32(m.a[i * K + k])) * emu::bf16_to_f32(m.b[k * N + j]);
  return m;
}

// A [rows x 64] 16-bit matrix as a TMA-able 4-D tensor (64, 1, rows, 1).
void desc_for(fa::TmaDesc* d, const uint16_t* base, int rows) {
  const uint64_t dims[4] = {64, 1, uint64_t(rows), 1};
  const uint64_t strides[3] = {128, 128, uint64_t(rows) * 128};
  const uint32_t box[4] = {64, 1, uint32_t(rows), 1};
  fa::make_tma_desc(d, base, dims, strides, box);
}

// mode 0: A and B K-major (A = a, B^T = bt in shared memory);
// mode 1: A and B M/N-major (at and b); mode 2: A from registers, B M/N-major.
// Returns the largest |D - want|.
double run_gemm(const Mats& m, int mode) {
  fa::TmaDesc ta, tb;
  const std::vector<uint16_t>& ga = mode == 1 ? m.at : m.a;
  const std::vector<uint16_t>& gb = mode == 0 ? m.bt : m.b;
  emu::clear_buffers();
  emu::register_buffer(ga.data(), ga.size() * 2, "a");
  emu::register_buffer(gb.data(), gb.size() * 2, "b");
  desc_for(&ta, ga.data(), 64);
  desc_for(&tb, gb.data(), 64);
  std::vector<float> d(128 * 32, NAN);
  emu::launch(dim3(1), 128, 2 * 8192 + 1024, [&] {
    unsigned char* sm = fa::smem_base_1024();
    uint64_t* bar = reinterpret_cast<uint64_t*>(sm + 16384);
    const int tid = fa::thread_idx();
    if (tid == 0) {
      fa::mbar_init(bar, 1);
      fa::mbar_arrive_expect_tx(bar, 2 * 8192);
      fa::tma_load_4d(sm, &ta, 0, 0, 0, 0, bar);
      fa::tma_load_4d(sm + 8192, &tb, 0, 0, 0, 0, bar);
    }
    fa::sync_threads();
    fa::mbar_wait(bar, 0);
    float acc[32];
    for (float& x : acc) x = 0.f;
    const uint32_t sa = fa::smem_u32(sm), sb = fa::smem_u32(sm + 8192);
    const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    uint32_t ar[4][4];
    if (mode == 2) {  // A fragments of rows 16w.., straight from the row-major global matrix
      for (int kk = 0; kk < 4; ++kk)
        for (int r = 0; r < 4; ++r) {
          const int row = 16 * w + g + (r & 1) * 8, k = 16 * kk + (r >> 1) * 8 + 2 * t;
          ar[kk][r] = uint32_t(m.a[row * K + k]) | (uint32_t(m.a[row * K + k + 1]) << 16);
        }
    }
    fa::wgmma_fence();
    for (int kk = 0; kk < 4; ++kk) {
      if (mode == 0) {
        fa::Wgmma<fa::Bf16, 64>::ss<0, 0>(acc, fa::kmajor_desc(sa + kk * 32),
                                          fa::kmajor_desc(sb + kk * 32), 1);
      } else if (mode == 1) {
        fa::Wgmma<fa::Bf16, 64>::ss<1, 1>(acc, fa::mnmajor_desc(sa + kk * 2048, 64),
                                          fa::mnmajor_desc(sb + kk * 2048, 64), 1);
      } else {
        fa::Wgmma<fa::Bf16, 64>::rs<1>(acc, ar[kk], fa::mnmajor_desc(sb + kk * 2048, 64), 1);
      }
    }
    fa::wgmma_commit();
    fa::wgmma_wait<0>();
    for (int i = 0; i < 32; ++i) d[size_t(tid) * 32 + i] = acc[i];
  });
  double worst = 0.0;
  for (int l = 0; l < 128; ++l)
    for (int i = 0; i < 32; ++i) {
      const int w = l / 32, g = (l % 32) / 4, t = l % 4, e = i % 4;
      const int r = 16 * w + g + (e >> 1) * 8, c = 8 * (i / 4) + 2 * t + (e & 1);
      worst = std::fmax(worst, std::fabs(double(d[size_t(l) * 32 + i]) - m.want[r * N + c]));
    }
  return worst;
}

// The sw128_offset helper agrees with where TMA puts elements.
bool check_offsets(const Mats& m) {
  fa::TmaDesc ta;
  emu::clear_buffers();
  emu::register_buffer(m.a.data(), m.a.size() * 2, "a");
  desc_for(&ta, m.a.data(), 64);
  bool ok = true;
  emu::launch(dim3(1), 32, 8192 + 1024, [&] {
    unsigned char* sm = fa::smem_base_1024();
    uint64_t* bar = reinterpret_cast<uint64_t*>(sm + 8192);
    if (fa::thread_idx() == 0) {
      fa::mbar_init(bar, 1);
      fa::mbar_arrive_expect_tx(bar, 8192);
      fa::tma_load_4d(sm, &ta, 0, 0, 0, 0, bar);
      fa::mbar_wait(bar, 0);
      for (int r = 0; r < 64; ++r)
        for (int c = 0; c < 64; ++c) {
          uint16_t v;
          std::memcpy(&v, sm + fa::sw128_offset(r, c, 64), 2);
          ok = ok && v == m.a[r * K + c];
        }
    }
  });
  return ok;
}

// One usage error per scenario; each should stop the emulator.
int fault(const std::string& what) {
  static std::vector<uint16_t> g(64 * 64, 0x3f80);  // 1.0 in bf16
  emu::register_buffer(g.data(), g.size() * 2, "g");
  fa::TmaDesc td;
  desc_for(&td, g.data(), 64);
  emu::config().tma_mode = what == "overwrite_in_flight" ? 1 : 0;
  if (what == "unordered_write") {
    // Warpgroup 1 writes a tile (with the proxy fence) that warpgroup 0's wgmma
    // reads, with no barrier in between; threads run in descending order, so
    // the writes come first and only the ordering check can object.
    emu::config().order = 1;
    emu::launch(dim3(1), 256, 2 * 8192 + 1024, [&] {
      unsigned char* sm = fa::smem_base_1024();
      const int tid = fa::thread_idx();
      if (tid >= 128) {
        for (int i = tid - 128; i < 2 * 8192 / 4; i += 128) fa::st_u32(sm + 4 * i, 0);
        fa::fence_proxy_async();
        return;
      }
      float acc[32];
      for (float& x : acc) x = 0.f;
      fa::wgmma_fence();
      fa::Wgmma<fa::Bf16, 64>::ss<0, 0>(acc, fa::kmajor_desc(fa::smem_u32(sm)), fa::kmajor_desc(fa::smem_u32(sm + 8192)), 1);
      fa::wgmma_commit();
      fa::wgmma_wait<0>();
    });
    std::printf("no error reported for %s\n", what.c_str());
    return 1;
  }
  emu::launch(dim3(1), 128, 3 * 8192 + 1024, [&] {
    unsigned char* sm = fa::smem_base_1024();
    uint64_t* bar = reinterpret_cast<uint64_t*>(sm + 3 * 8192);
    const int tid = fa::thread_idx();
    float acc[32];
    for (float& x : acc) x = 0.f;
    const uint32_t s0 = fa::smem_u32(sm), s1 = fa::smem_u32(sm + 8192);
    if (what == "unwaited_load") {
      if (tid == 0) {
        fa::mbar_init(bar, 1);
        fa::mbar_arrive_expect_tx(bar, 8192);
        fa::tma_load_4d(sm, &td, 0, 0, 0, 0, bar);
      }
      return;  // nobody waits: the block ends with the load in flight
    }
    if (what == "deadlock") {
      if (tid == 0) fa::mbar_init(bar, 2);
      fa::sync_threads();
      if (tid == 0) fa::mbar_arrive(bar);  // one arrival of two
      fa::mbar_wait(bar, 0);
      return;
    }
    if (what == "unbalanced_named_barrier") {
      if (tid < 64) fa::named_bar_arrive(1, 128);  // half the arrivals, and nobody syncs
      return;
    }
    if (what == "misaligned_tma") {
      if (tid == 0) {
        fa::mbar_init(bar, 1);
        fa::tma_load_4d(sm + 128, &td, 0, 0, 0, 0, bar);
      }
      return;
    }
    // The rest use a wgmma on zeroed tiles.
    for (int i = tid; i < 2 * 8192 / 4; i += 128) fa::st_u32(sm + 4 * i, 0);
    if (what != "missing_proxy_fence") fa::fence_proxy_async();
    fa::sync_threads();
    if (what != "missing_wgmma_fence") fa::wgmma_fence();
    uint32_t ar[4] = {0, 0, 0, 0};
    if (what == "a_regs_changed") {
      fa::Wgmma<fa::Bf16, 64>::rs<1>(acc, ar, fa::mnmajor_desc(s1, 64), 1);
    } else {
      fa::Wgmma<fa::Bf16, 64>::ss<0, 0>(acc, fa::kmajor_desc(s0), fa::kmajor_desc(s1), 1);
    }
    fa::wgmma_commit();
    if (what == "accumulator_written") acc[3] = 1.f;
    if (what == "a_regs_changed") ar[2] = 7;
    if (what == "overwrite_in_flight" && tid == 0) {
      fa::mbar_init(bar, 1);
      fa::mbar_arrive_expect_tx(bar, 8192);
      fa::tma_load_4d(sm + 8192, &td, 0, 0, 0, 0, bar);  // B of the wgmma still in flight
    }
    if (what == "diverged" && tid >= 64) {
      fa::wgmma_commit();  // half the warpgroup commits, the other half waits
    }
    fa::wgmma_wait<0>();
    if (what == "overwrite_in_flight" && tid == 0) fa::mbar_wait(bar, 0);
  });
  std::printf("no error reported for %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: selftest_sm90 gemm|<fault scenario>\n");
    return 2;
  }
  const std::string what = argv[1];
  if (what == "gemm") {
    const Mats m = make_mats();
    if (!check_offsets(m)) {
      std::printf("sw128_offset disagrees with the TMA layout\n");
      return 1;
    }
    const char* names[] = {"K-major x K-major", "MN-major x MN-major", "registers x MN-major"};
    for (int mode = 0; mode < 3; ++mode) {
      const double err = run_gemm(m, mode);
      // Products of multiples of 1/8 summed over 64 terms are exact in fp32.
      if (err != 0.0) {
        std::printf("%s: max error %g\n", names[mode], err);
        return 1;
      }
    }
    std::printf("ok\n");
    return 0;
  }
  return fault(what);
}
