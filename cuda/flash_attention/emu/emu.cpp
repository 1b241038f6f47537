// CPU emulator of arch.cuh's hardware layer; see emu.h.
//
// Fibers start on their own stacks with makecontext/swapcontext and then
// switch with _setjmp/_longjmp, which skip the signal-mask system calls of
// swapcontext (a fiber switch happens for every lane at every warp
// instruction). Fortified longjmp rejects jumps between stacks, so it is off.
#undef _FORTIFY_SOURCE
#include "flash_attention/emu/emu.h"
#include "flash_attention/emu/emu_internal.h"

#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace llmpre {
namespace cuda {
namespace fa {
namespace emu {

namespace {

constexpr size_t kStackBytes = 256 * 1024;

struct Copy {
  void* dst;
  const void* src;
  bool pred;
  uint64_t issued;  // barrier epoch at issue
};

// Race-detector state of one 4-byte shared word (epochs are stored + 1; 0 = never).
struct Shadow {
  uint64_t w_epoch = 0, r_epoch = 0;
  int w_tid = -1, r_tid = -1;
  bool r_multi = false;
};

struct Fiber {
  ucontext_t ctx;
  jmp_buf jb;
  std::vector<char> stack;
  bool started = false;
  bool done = false;
  std::vector<Copy> open;                   // issued, not yet committed
  std::vector<std::vector<Copy>> groups;    // committed, not yet landed (lazy mode)
};

struct Warp {
  int count = 0;
  uint64_t gen = 0;
  uint32_t u[32][6];
  float f[32][4];
  const void* p[32];
};

struct Buffer {
  const char* lo;
  const char* hi;
  std::string name;
};

Config g_config;
std::vector<Buffer> g_buffers;

// Current block.
jmp_buf g_sched;
std::vector<Fiber> g_fibers;
std::vector<Warp> g_warps;
std::vector<unsigned char> g_smem;
std::vector<Shadow> g_shadow;
int g_smem_bytes = 0;
int g_threads = 0;
int g_cur = -1;
int g_block[3] = {0, 0, 0};
int g_grid[3] = {1, 1, 1};
int g_bar_count = 0;
uint64_t g_bar_gen = 0;
uint64_t g_events = 0;  // barrier completions and fiber exits (progress)
const std::function<void()>* g_body = nullptr;

void yield() {
  if (g_cur < 0) fail("warp or block collective outside a kernel");
  if (!_setjmp(g_fibers[size_t(g_cur)].jb)) _longjmp(g_sched, 1);
}

void fiber_main(int tid) {
  g_cur = tid;
  (*g_body)();
  Fiber& f = g_fibers[size_t(tid)];
  if (!f.open.empty() || !f.groups.empty())
    fail("thread %d of block (%d, %d, %d) exited with cp.async copies not waited for", tid, g_block[0],
         g_block[1], g_block[2]);
  detail::sm90_thread_exit(tid);
  f.done = true;
  ++g_events;
  _longjmp(g_sched, 1);  // never returns: this stack is dropped
}

// Runs fiber t until it yields or ends.
void resume(int t) {
  Fiber& f = g_fibers[size_t(t)];
  g_cur = t;
  if (!_setjmp(g_sched)) {
    if (!f.started) {
      f.started = true;
      ucontext_t from;
      swapcontext(&from, &f.ctx);  // `from` is abandoned: the fiber comes back by _longjmp
    } else {
      _longjmp(f.jb, 1);
    }
  }
  g_cur = -1;
}

void warp_sync() {
  Warp& w = g_warps[g_cur / 32];
  const uint64_t my = w.gen;
  if (++w.count == 32) {
    w.count = 0;
    ++w.gen;
    ++g_events;
    ++g_config.warp_ops;
    return;
  }
  while (w.gen == my) yield();
}

bool in_smem(const void* p, size_t bytes);

// Records an access of [p, p + bytes) in shared memory by thread g_cur; a
// write may have happened at any time since barrier epoch `since`.
void record(const void* p, size_t bytes, bool write, uint64_t since, const char* what) {
  const size_t first = size_t(static_cast<const unsigned char*>(p) - g_smem.data()) / 4;
  const size_t last = (size_t(static_cast<const unsigned char*>(p) - g_smem.data()) + bytes - 1) / 4;
  const uint64_t now = g_bar_gen + 1;
  since += 1;
  for (size_t i = first; i <= last; ++i) {
    Shadow& s = g_shadow[i];
    if (write) {
      if (s.r_epoch >= since && (s.r_tid != g_cur || s.r_multi))
        fail("shared-memory race (%s): byte offset %zu written while thread %d may still read it "
             "(no __syncthreads in between)", what, i * 4, s.r_tid == g_cur ? -2 : s.r_tid);
      if (s.w_epoch >= since && s.w_tid != g_cur)
        fail("shared-memory race (%s): byte offset %zu written by threads %d and %d without a barrier",
             what, i * 4, s.w_tid, g_cur);
      s.w_epoch = now;
      s.w_tid = g_cur;
    } else {
      if (s.w_epoch == now && s.w_tid != g_cur)
        fail("shared-memory race (%s): byte offset %zu read right after thread %d wrote it "
             "(no __syncthreads in between)", what, i * 4, s.w_tid);
      if (s.r_epoch == now) {
        if (s.r_tid != g_cur) s.r_multi = true;
      } else {
        s.r_epoch = now;
        s.r_tid = g_cur;
        s.r_multi = false;
      }
    }
  }
}

void do_copy(const Copy& c) {
  record(c.dst, 16, true, c.issued, "cp.async");
  if (c.pred) {
    std::memcpy(c.dst, c.src, 16);
  } else {
    std::memset(c.dst, 0, 16);
  }
}

bool in_smem(const void* p, size_t bytes) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  return !g_smem.empty() && c >= g_smem.data() && c + bytes <= g_smem.data() + g_smem_bytes;
}

const Buffer* find_buffer(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const Buffer& b : g_buffers)
    if (c >= b.lo && c + bytes <= b.hi) return &b;
  return nullptr;
}

void check_smem(const void* p, size_t bytes, size_t align, const char* what) {
  if (!in_smem(p, bytes))
    fail("%s: shared address %p (+%zu) outside the block's %d bytes (thread %d)", what, p, bytes,
         g_smem_bytes, g_cur);
  if (reinterpret_cast<uintptr_t>(p) % align) fail("%s: shared address %p not %zu-byte aligned", what, p, align);
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

Config& config() { return g_config; }

void fail(const char* fmt, ...) {
  std::fprintf(stderr, "EMULATOR ERROR: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, " [block (%d, %d, %d), thread %d]\n", g_block[0], g_block[1], g_block[2], g_cur);
  std::fflush(stderr);
  std::_Exit(3);
}

void register_buffer(const void* p, size_t bytes, const char* name) {
  g_buffers.push_back({static_cast<const char*>(p), static_cast<const char*>(p) + bytes, name});
}
void clear_buffers() { g_buffers.clear(); }

void launch(dim3 grid, int threads, int smem_bytes, const std::function<void()>& body) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("launch with an empty grid (%u, %u, %u)", grid.x, grid.y, grid.z);
  if (threads <= 0 || threads % 32 || threads > 1024) fail("launch with %d threads", threads);
  if (grid.y > 65535 || grid.z > 65535) fail("grid (%u, %u, %u) over the limits", grid.x, grid.y, grid.z);
  ++g_config.launches;
  std::mt19937 rng(g_config.seed + unsigned(g_config.launches));
  g_body = &body;
  g_threads = threads;
  g_grid[0] = int(grid.x);
  g_grid[1] = int(grid.y);
  g_grid[2] = int(grid.z);
  g_fibers.assign(size_t(threads), Fiber());
  for (Fiber& f : g_fibers) f.stack.resize(kStackBytes);
  std::vector<int> order(static_cast<size_t>(threads), 0);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block[0] = int(x);
        g_block[1] = int(y);
        g_block[2] = int(z);
        g_smem_bytes = smem_bytes;
        g_smem.assign(size_t(smem_bytes > 0 ? smem_bytes : 16), 0xff);  // NaN in bf16, fp16 and fp32
        g_shadow.assign(g_smem.size() / 4 + 1, Shadow());
        g_warps.assign(size_t(threads / 32), Warp());
        g_bar_count = 0;
        g_bar_gen = 0;
        detail::sm90_block_start(threads);
        for (int t = 0; t < threads; ++t) {
          Fiber& f = g_fibers[size_t(t)];
          f.done = false;
          f.started = false;
          f.open.clear();
          f.groups.clear();
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 1, t);
        }
        for (int t = 0; t < threads; ++t) order[size_t(t)] = g_config.order == 1 ? threads - 1 - t : t;
        int live = threads;
        while (live > 0) {
          if (g_config.order == 2) std::shuffle(order.begin(), order.end(), rng);
          const uint64_t before = g_events;
          for (int t : order) {
            if (g_fibers[size_t(t)].done) continue;
            resume(t);
          }
          detail::sm90_round_end(rng);
          live = 0;
          for (const Fiber& f : g_fibers) live += !f.done;
          if (live > 0 && g_events == before)
            fail("deadlock: %d threads wait at a barrier, mbarrier or collective that nothing will release", live);
        }
        detail::sm90_block_end();
      }
  g_smem.clear();
  g_smem_bytes = 0;
  g_body = nullptr;
}

int tid() { return g_cur; }
int block(int axis) { return g_block[axis]; }
int grid(int axis) { return g_grid[axis]; }
unsigned char* smem() { return g_smem.data(); }

void block_barrier() {
  const uint64_t my = g_bar_gen;
  if (++g_bar_count == g_threads) {
    g_bar_count = 0;
    ++g_bar_gen;
    ++g_events;
    detail::sm90_block_barrier_complete();
    return;
  }
  while (g_bar_gen == my) yield();
}

void check_access(const void* p, size_t bytes, size_t align, bool write, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % align) fail("%s: address %p not %zu-byte aligned", what, p, align);
  if (in_smem(p, bytes)) {
    if (g_cur < 0) fail("%s: shared memory touched outside a kernel", what);
    record(p, bytes, write, g_bar_gen, what);
    if (write) detail::sm90_generic_write(p, bytes);
    return;
  }
  if (!find_buffer(p, bytes)) fail("%s: address %p (+%zu bytes) is in no buffer and not in shared memory", what, p, bytes);
}

float shfl_xor(float v, int mask) {
  Warp& w = g_warps[g_cur / 32];
  const int lane = g_cur % 32;
  w.f[lane][0] = v;
  warp_sync();
  const float r = w.f[lane ^ mask][0];
  warp_sync();
  return r;
}

void ldmatrix_x4(uint32_t (&r)[4], const void* smem_ptr, bool trans) {
  Warp& w = g_warps[g_cur / 32];
  const int lane = g_cur % 32;
  check_smem(smem_ptr, 16, 16, trans ? "ldmatrix.trans row" : "ldmatrix row");
  record(smem_ptr, 16, false, g_bar_gen, "ldmatrix");
  w.p[lane] = smem_ptr;
  warp_sync();
  const int g = lane >> 2, t = lane & 3;
  for (int q = 0; q < 4; ++q) {
    uint16_t e[2];
    for (int i = 0; i < 2; ++i) {
      // Matrix q, rows given by lanes 8q..8q+7; element (row, col) = row's col-th 16-bit word.
      const int row = trans ? 2 * t + i : g;
      const int col = trans ? g : 2 * t + i;
      std::memcpy(&e[i], static_cast<const char*>(w.p[8 * q + row]) + 2 * col, 2);
    }
    r[q] = uint32_t(e[0]) | (uint32_t(e[1]) << 16);
  }
  warp_sync();
}

void mma(bool bf16, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Warp& w = g_warps[g_cur / 32];
  const int lane = g_cur % 32;
  for (int i = 0; i < 4; ++i) w.u[lane][i] = a[i];
  w.u[lane][4] = b0;
  w.u[lane][5] = b1;
  warp_sync();
  auto half = [&](uint32_t reg, int which) {
    const uint16_t h = uint16_t(which ? reg >> 16 : reg & 0xffffu);
    return bf16 ? bf16_to_f32(h) : f16_to_f32(h);
  };
  // A[r][k]: lane (r % 8) * 4 + (k % 8) / 2, register (r >= 8) + 2 * (k >= 8), half k % 2.
  auto A = [&](int r, int k) {
    return half(w.u[(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k % 2);
  };
  // B[k][n]: lane n * 4 + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
  auto B = [&](int k, int n) { return half(w.u[n * 4 + (k % 8) / 2][4 + (k >= 8)], k % 2); };
  const int g = lane >> 2, t = lane & 3;
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >> 1) * 8, c = 2 * t + (e & 1);
    double acc = d[e];
    for (int k = 0; k < 16; ++k) acc += double(A(r, k)) * double(B(k, c));
    d[e] = float(acc);
  }
  warp_sync();
}

void cp_async(void* smem_ptr, const void* gmem, bool pred) {
  check_smem(smem_ptr, 16, 16, "cp.async destination");
  if (reinterpret_cast<uintptr_t>(gmem) % 16) fail("cp.async source %p not 16-byte aligned", gmem);
  // Even with src-size 0 the source must be a valid global address.
  if (!find_buffer(gmem, pred ? 16 : 1)) fail("cp.async source %p (+%d bytes) is in no buffer", gmem, pred ? 16 : 0);
  const Copy c{smem_ptr, gmem, pred, g_bar_gen};
  if (g_config.lazy_copies) {
    g_fibers[size_t(g_cur)].open.push_back(c);
  } else {
    do_copy(c);
    g_fibers[size_t(g_cur)].open.push_back(Copy{nullptr, nullptr, false, 0});  // keeps the group count
  }
}

void cp_async_commit() {
  Fiber& f = g_fibers[size_t(g_cur)];
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

void cp_async_wait(int n) {
  Fiber& f = g_fibers[size_t(g_cur)];
  if (!f.open.empty()) fail("cp.async.wait_group with copies issued but not committed");
  while (int(f.groups.size()) > n) {
    for (const Copy& c : f.groups.front())
      if (c.dst) do_copy(c);
    f.groups.erase(f.groups.begin());
  }
}

uint16_t f32_to_bf16(float f) {
  const uint32_t x = bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float bf16_to_f32(uint16_t h) { return from_bits(uint32_t(h) << 16); }

uint16_t f32_to_f16(float f) {
  const uint32_t x = bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {  // below 2^-14: a multiple of 2^-24 (subnormal), round to nearest even
    const float scaled = from_bits(ax) * 16777216.0f;  // exact: power of two
    return uint16_t(sign | uint32_t(std::nearbyint(scaled)));
  }
  const uint32_t mant = ax & 0x7fffffu;
  uint32_t h = ((((ax >> 23) - 127u + 15u)) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rolls into the exponent
  return uint16_t(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = float(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) return from_bits(sign | 0x7f800000u | (m << 13));
  return from_bits(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

namespace detail {

int current() { return g_cur; }
int block_threads() { return g_threads; }
void yield() { ::llmpre::cuda::fa::emu::yield(); }
void progress() { ++g_events; }
unsigned char* smem_data() { return g_smem.data(); }
int smem_size() { return g_smem_bytes; }
bool in_smem(const void* p, size_t bytes) { return ::llmpre::cuda::fa::emu::in_smem(p, bytes); }
bool in_buffer(const void* p, size_t bytes) { return find_buffer(p, bytes) != nullptr; }

}  // namespace detail

}  // namespace emu
}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
