// CPU emulator of the Hopper layer; see emu_sm90.h for what it checks.
#include "flash_attention/emu/emu_sm90.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "flash_attention/emu/emu.h"
#include "flash_attention/emu/emu_internal.h"

namespace llmpre {
namespace cuda {
namespace fa {
namespace emu {

namespace {

using detail::current;
using detail::progress;
using detail::yield;

constexpr uint32_t kTmaMagic = 0x414d5400u;  // "\0TMA"

struct TmaMap {
  uint32_t magic;
  uint32_t elem_bytes;
  const unsigned char* base;
  uint64_t dims[4];
  uint64_t strides[4];  // bytes; strides[0] = elem_bytes
  uint32_t box[4];
};
static_assert(sizeof(TmaMap) <= 128, "a TMA map fits a CUtensorMap");

struct Mbar {
  int count = 0;        // arrivals per phase
  int pending = 0;      // arrivals still missing in the current phase
  int64_t tx = 0;       // transaction bytes still expected in the current phase
  uint64_t phase = 0;   // completed phases
};

struct Load {
  uint32_t dst;  // shared offset
  bool tensor;
  TmaMap map;
  int c[4];
  const unsigned char* src;  // bulk copy
  uint32_t bytes;
  uint32_t bar;
};

struct Store {
  TmaMap map;
  uint32_t src;
  int c[4];
  float* reduce_dst = nullptr;  // set: a 1-D bulk add of reduce_bytes instead of a tensor store
  uint32_t reduce_bytes = 0;
};

struct Named {
  int count = 0, threads = 0;
  uint64_t gen = 0;
  std::vector<uint32_t> clock;  // what the arrivals of the open generation know
  std::vector<int> waiters;     // threads blocked in bar.sync on it
};

// One wgmma in flight.
struct Op {
  int n = 0;
  bool bf16 = true, accumulate = false;
  std::vector<double> a;  // 64 x 16
  std::vector<double> b;  // 16 x n
  std::vector<uint32_t> read_off;    // shared offsets read (for the retirement check)
  std::vector<uint16_t> read_val;
  float* d[128];
  const uint32_t* a_regs[128];
  uint32_t a_saved[128][4];
  bool chained[128];
  std::vector<float> saved;  // 128 x n/2 accumulator inputs (not chained)
};

struct Group {
  // Collective gather.
  int count = 0;
  uint64_t gen = 0;
  int kind = 0;
  uint64_t desc_a = 0, desc_b = 0;
  int n = 0;
  bool bf16 = true, tnsp_a = false, tnsp_b = false, accumulate = false, rs = false;
  float* d[128];
  const uint32_t* a_regs[128];
  int wait_n = 0;
  // Asynchronous state.
  std::vector<Op*> open;
  std::vector<std::vector<Op*>> committed;
};

std::map<uint32_t, Mbar> g_mbar;
std::vector<Load> g_loads;
std::vector<std::vector<Store>> g_store_open, g_store_groups;  // per thread
std::vector<Named> g_named;
std::vector<Group> g_groups;
std::vector<int> g_unfenced;                    // per 4-byte shared word: writer or -1
std::vector<std::vector<uint32_t>> g_unfenced_by;  // per thread: words it wrote since its last fence
std::vector<bool> g_fenced;                     // per thread: wgmma.fence since its last wgmma.wait_group
std::map<float*, std::pair<int, std::vector<float>>> g_inflight;  // accumulator -> (ops, latest value)
// Happens-before between threads (vector clocks advanced by __syncthreads and
// named barriers): g_clock[t][u] = the epochs of thread u that t has
// synchronised with; a generic write of a shared word records its writer's
// epoch, and an async-proxy read (wgmma, TMA store) of that word must come
// from threads that know it.
std::vector<std::vector<uint32_t>> g_clock;
std::vector<int> g_writer;        // per 4-byte shared word: last generic writer or -1
std::vector<uint32_t> g_wepoch;   // its epoch at the write

void merge_clock(std::vector<uint32_t>& into, const std::vector<uint32_t>& from) {
  for (size_t i = 0; i < into.size(); ++i) into[i] = std::max(into[i], from[i]);
}

// Every word of [off, off + bytes) last written by a generic store must be
// known to `clock` (a write that happened before the read).
void check_ordered(uint32_t off, uint32_t bytes, const std::vector<uint32_t>& clock, const char* what) {
  for (uint32_t w = off / 4; w <= (off + bytes - 1) / 4; ++w) {
    const int t = g_writer[w];
    if (t >= 0 && clock[size_t(t)] < g_wepoch[w])
      fail("%s reads shared byte offset %u, written by thread %d with no barrier ordering that write before "
           "the read (a data race)", what, w * 4, t);
  }
}

float from_half(bool bf16, uint16_t h) { return bf16 ? bf16_to_f32(h) : f16_to_f32(h); }

uint32_t swizzle128(uint32_t off) { return off ^ (((off >> 7) & 7u) << 4); }

const TmaMap& map_of(const void* desc) {
  const TmaMap& m = *static_cast<const TmaMap*>(desc);
  if (m.magic != kTmaMagic) fail("TMA descriptor was not made by make_tma_desc (bad magic)");
  return m;
}

Mbar& mbar_at(const void* bar, const char* what) {
  const uint32_t off = smem_offset(bar);
  if (off % 8) fail("%s: mbarrier at shared offset %u is not 8-byte aligned", what, off);
  auto it = g_mbar.find(off);
  if (it == g_mbar.end()) fail("%s: no mbarrier initialised at shared offset %u", what, off);
  return it->second;
}

void mbar_update(Mbar& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.phase;
    m.pending = m.count;
    progress();
  }
}

void complete_tx(uint32_t bar, uint32_t bytes) {
  auto it = g_mbar.find(bar);
  if (it == g_mbar.end()) fail("TMA completion on shared offset %u, where no mbarrier lives", bar);
  it->second.tx -= bytes;
  mbar_update(it->second);
}

// Walks the box of `m` at coordinates c, innermost dimension first: fn(index
// in the box, whether the element lies inside the tensor, its byte offset
// from the tensor's base). Returns the number of elements.
template <class F>
uint32_t for_each_box_element(const TmaMap& m, const int (&c)[4], F&& fn) {
  uint32_t idx = 0;
  for (uint32_t i3 = 0; i3 < m.box[3]; ++i3)
    for (uint32_t i2 = 0; i2 < m.box[2]; ++i2)
      for (uint32_t i1 = 0; i1 < m.box[1]; ++i1)
        for (uint32_t i0 = 0; i0 < m.box[0]; ++i0, ++idx) {
          const int64_t at[4] = {int64_t(c[0]) + i0, int64_t(c[1]) + i1, int64_t(c[2]) + i2, int64_t(c[3]) + i3};
          bool in = true;
          uint64_t g = 0;
          for (int k = 0; k < 4; ++k) {
            in = in && at[k] >= 0 && uint64_t(at[k]) < m.dims[k];
            g += uint64_t(at[k]) * m.strides[k];
          }
          fn(idx, in, g);
        }
  return idx;
}

void land(const Load& l) {
  unsigned char* smem = detail::smem_data();
  if (!l.tensor) {
    std::memcpy(smem + l.dst, l.src, l.bytes);
    complete_tx(l.bar, l.bytes);
    progress();
    return;
  }
  const TmaMap& m = l.map;
  const uint32_t eb = m.elem_bytes;
  const uint32_t elems = for_each_box_element(m, l.c, [&](uint32_t idx, bool in, uint64_t g) {
    unsigned char* dst = smem + swizzle128(l.dst + idx * eb);
    if (in) {
      if (!detail::in_buffer(m.base + g, eb)) fail("TMA load reads outside its tensor's buffer");
      std::memcpy(dst, m.base + g, eb);
    } else {
      std::memset(dst, 0, eb);  // out of bounds: zero fill
    }
  });
  complete_tx(l.bar, elems * eb);
  progress();
}

// Lands the pending loads that signal `bar` (every one when bar is ~0u).
bool land_for(uint32_t bar) {
  bool any = false;
  for (size_t i = 0; i < g_loads.size();) {
    if (bar == ~0u || g_loads[i].bar == bar) {
      const Load l = g_loads[i];
      g_loads.erase(g_loads.begin() + long(i));
      land(l);
      any = true;
    } else {
      ++i;
    }
  }
  return any;
}

void check_fenced(uint32_t off, uint32_t bytes, const char* what) {
  for (uint32_t w = off / 4; w <= (off + bytes - 1) / 4; ++w)
    if (g_unfenced[w] >= 0)
      fail("%s reads shared byte offset %u, written by thread %d with a generic store and no "
           "fence.proxy.async since", what, w * 4, g_unfenced[w]);
}

uint16_t smem_u16(uint32_t off, const char* what) {
  if (off + 2 > uint32_t(detail::smem_size())) fail("%s operand element at shared offset %u is outside shared memory", what, off);
  uint16_t h;
  std::memcpy(&h, detail::smem_data() + off, 2);
  return h;
}

// Shared offset of element (row, k) of a k16 slice described by desc, with
// row the M (A) or N (B) index; mn_major: the row index is contiguous.
uint32_t operand_offset(uint64_t desc, bool mn_major, int row, int k, const char* what) {
  const uint32_t start = uint32_t(desc & 0x3fffu) << 4;
  const uint32_t lbo = uint32_t((desc >> 16) & 0x3fffu) << 4;
  const uint32_t sbo = uint32_t((desc >> 32) & 0x3fffu) << 4;
  const int base_offset = int((desc >> 49) & 7u);
  const int layout = int(desc >> 62);
  if (layout != 1) fail("%s descriptor: layout type %d; only 128-byte swizzle (1) is emulated", what, layout);
  if (base_offset != 0) fail("%s descriptor: base offset %d; only 0 is emulated", what, base_offset);
  uint32_t a;
  if (!mn_major) {
    a = start + uint32_t(row % 8) * 128 + uint32_t(row / 8) * sbo + uint32_t(k) * 2;
  } else {
    a = start + uint32_t(row % 64) * 2 + uint32_t(row / 64) * lbo + uint32_t(k % 8) * 128 + uint32_t(k / 8) * sbo;
  }
  return swizzle128(a);
}

Group& my_group() {
  const int t = current();
  if (t < 0) fail("warpgroup instruction outside a kernel");
  return g_groups[size_t(t / 128)];
}

// Every thread of the warpgroup reaches a collective of kind `kind`; the
// last one runs `last` (with the gathered operands) before anyone goes on.
template <class F>
void collective(Group& g, int kind, const char* name, F&& last) {
  if (g.count == 0) g.kind = kind;
  if (g.kind != kind) fail("warpgroup threads diverged: one is at %s while others are at another instruction", name);
  const uint64_t my = g.gen;
  if (++g.count == 128) {
    last();
    g.count = 0;
    ++g.gen;
    progress();
    return;
  }
  while (g.gen == my) yield();
}

void retire(Op* op) {
  // Operands must not have changed since issue.
  for (size_t i = 0; i < op->read_off.size(); ++i)
    if (smem_u16(op->read_off[i], "wgmma") != op->read_val[i])
      fail("shared byte offset %u, an operand of an in-flight wgmma, changed before wgmma.wait_group retired it",
           op->read_off[i]);
  const int nh = op->n / 2;
  for (int l = 0; l < 128; ++l) {
    if (op->a_regs[l] && std::memcmp(op->a_regs[l], op->a_saved[l], 16) != 0)
      fail("register A operand of an in-flight wgmma (thread %d of its warpgroup) changed before retirement", l);
    const int w = l / 32, g = (l % 32) / 4, t = l % 4;
    auto& slot = g_inflight[op->d[l]];
    std::vector<float>& cur = slot.second;
    if (!op->chained[l]) cur.assign(op->saved.begin() + long(l) * nh, op->saved.begin() + long(l + 1) * nh);
    for (int i = 0; i < nh; ++i) {
      const int j = i / 4, e = i % 4;
      const int r = 16 * w + g + (e >> 1) * 8, c = 8 * j + 2 * t + (e & 1);
      double acc = op->accumulate ? double(cur[size_t(i)]) : 0.0;
      for (int k = 0; k < 16; ++k) acc += op->a[size_t(r) * 16 + k] * op->b[size_t(k) * op->n + c];
      cur[size_t(i)] = float(acc);
    }
    if (--slot.first == 0) {
      for (int i = 0; i < nh; ++i) {
        uint32_t bits;
        std::memcpy(&bits, &op->d[l][i], 4);
        if (bits != 0x7fc0dead)
          fail("accumulator register %d of thread %d of a warpgroup was written while a wgmma was in flight", i, l);
      }
      std::memcpy(op->d[l], cur.data(), sizeof(float) * size_t(nh));
      g_inflight.erase(op->d[l]);
    }
  }
  delete op;
}

}  // namespace

namespace detail {

void sm90_block_start(int threads) {
  g_mbar.clear();
  g_loads.clear();
  g_store_open.assign(size_t(threads), {});
  g_store_groups.assign(size_t(threads), {});
  g_named.assign(16, Named());
  for (Group& g : g_groups) {
    for (Op* op : g.open) delete op;
    for (auto& v : g.committed)
      for (Op* op : v) delete op;
  }
  g_groups.assign(size_t((threads + 127) / 128), Group());
  g_unfenced.assign(size_t(smem_size() / 4 + 1), -1);
  g_unfenced_by.assign(size_t(threads), {});
  g_fenced.assign(size_t(threads), false);
  g_inflight.clear();
  g_clock.assign(size_t(threads), std::vector<uint32_t>(size_t(threads), 0));
  for (int t = 0; t < threads; ++t) g_clock[size_t(t)][size_t(t)] = 1;
  g_writer.assign(size_t(smem_size() / 4 + 1), -1);
  g_wepoch.assign(size_t(smem_size() / 4 + 1), 0);
}

void sm90_block_barrier_complete() {
  if (g_clock.empty()) return;
  std::vector<uint32_t> all(g_clock.size(), 0);
  for (const auto& c : g_clock) merge_clock(all, c);
  for (size_t t = 0; t < g_clock.size(); ++t) {
    g_clock[t] = all;
    ++g_clock[t][t];
  }
}

void sm90_round_end(std::mt19937& rng) {
  if (config().tma_mode != 2 || g_loads.empty()) return;
  std::vector<Load> keep;
  std::vector<Load> now;
  for (const Load& l : g_loads) (rng() & 1 ? now : keep).push_back(l);
  g_loads = keep;
  for (const Load& l : now) land(l);
}

void sm90_block_end() {
  if (!g_loads.empty())
    fail("the block ended with %zu TMA/bulk loads into its shared memory that no thread waited for", g_loads.size());
  for (size_t id = 0; id < g_named.size(); ++id)
    if (g_named[id].count != 0)
      fail("the block ended with named barrier %zu holding %d of %d arrivals (its bar.arrive and bar.sync "
           "counts do not balance)", id, g_named[id].count, g_named[id].threads);
}

void sm90_thread_exit(int tid) {
  if (!g_store_open[size_t(tid)].empty() || !g_store_groups[size_t(tid)].empty())
    fail("thread %d exited with TMA stores not waited for (cp.async.bulk.wait_group)", tid);
  if (size_t(tid / 128) < g_groups.size()) {
    const Group& g = g_groups[size_t(tid / 128)];
    if (!g.open.empty() || !g.committed.empty()) fail("thread %d exited with wgmma operations in flight", tid);
  }
}

uint32_t wgmma_operand_offset(uint64_t desc, bool mn_major, int row, int k) {
  return operand_offset(desc, mn_major, row, k, "wgmma operand");
}

void sm90_generic_write(const void* p, size_t bytes) {
  const int t = current();
  if (t < 0 || g_unfenced.empty()) return;
  const uint32_t off = smem_offset(p);
  for (uint32_t w = off / 4; w <= uint32_t(off + bytes - 1) / 4; ++w) {
    if (g_unfenced[w] != t) g_unfenced_by[size_t(t)].push_back(w);
    g_unfenced[w] = t;
    g_writer[w] = t;
    g_wepoch[w] = g_clock[size_t(t)][size_t(t)];
  }
}

}  // namespace detail

void tma_encode(void* desc128, const void* base, const uint64_t (&dims)[4], const uint64_t (&strides)[3],
                const uint32_t (&box)[4]) {
  TmaMap m{};
  m.magic = kTmaMagic;
  m.elem_bytes = 2;
  m.base = static_cast<const unsigned char*>(base);
  if (reinterpret_cast<uintptr_t>(base) % 16) fail("TMA tensor base %p is not 16-byte aligned", base);
  for (int k = 0; k < 4; ++k) {
    if (dims[k] == 0 || dims[k] > (uint64_t(1) << 32)) fail("TMA dim %d = %llu out of range", k, (unsigned long long)dims[k]);
    if (box[k] == 0 || box[k] > 256) fail("TMA box dim %d = %u out of range", k, box[k]);
    m.dims[k] = dims[k];
    m.box[k] = box[k];
  }
  m.strides[0] = 2;
  for (int k = 0; k < 3; ++k) {
    if (strides[k] % 16 || strides[k] >= (uint64_t(1) << 40)) fail("TMA stride %d = %llu not a multiple of 16", k, (unsigned long long)strides[k]);
    m.strides[k + 1] = strides[k];
  }
  if (box[0] * 2 > 128) fail("TMA box inner dimension %u x 2 bytes exceeds the 128-byte swizzle span", box[0]);
  std::memset(desc128, 0, 128);
  std::memcpy(desc128, &m, sizeof(m));
}

uint32_t smem_offset(const void* p) {
  if (!detail::in_smem(p, 1)) fail("address %p is not in shared memory", p);
  return uint32_t(static_cast<const unsigned char*>(p) - detail::smem_data());
}

void mbar_init(void* bar, int count) {
  const uint32_t off = smem_offset(bar);
  if (off % 8) fail("mbarrier.init at shared offset %u: not 8-byte aligned", off);
  if (count < 1) fail("mbarrier.init with count %d", count);
  Mbar m;
  m.count = m.pending = count;
  g_mbar[off] = m;
}

void mbar_arrive(void* bar, uint32_t expect_tx_bytes) {
  Mbar& m = mbar_at(bar, "mbarrier.arrive");
  if (m.pending <= 0) fail("mbarrier.arrive on a phase that already has all its arrivals");
  m.tx += expect_tx_bytes;
  --m.pending;
  mbar_update(m);
  progress();
}

void mbar_wait(void* bar, int parity) {
  const uint32_t off = smem_offset(bar);
  for (;;) {
    Mbar& m = mbar_at(bar, "mbarrier.try_wait");
    if (int(m.phase & 1) != parity) return;
    if (land_for(off)) continue;
    yield();
  }
}

void tma_load(void* dst, const void* desc, int c0, int c1, int c2, int c3, void* bar) {
  const TmaMap& m = map_of(desc);
  const uint32_t off = smem_offset(dst);
  const uint32_t bytes = m.box[0] * m.box[1] * m.box[2] * m.box[3] * m.elem_bytes;
  if (off % 1024) fail("TMA load destination (shared offset %u) is not 1024-byte aligned (128-byte swizzle)", off);
  if (!detail::in_smem(dst, bytes)) fail("TMA load of %u bytes at shared offset %u overruns shared memory", bytes, off);
  mbar_at(bar, "TMA load");
  Load l{};
  l.dst = off;
  l.tensor = true;
  l.map = m;
  l.c[0] = c0;
  l.c[1] = c1;
  l.c[2] = c2;
  l.c[3] = c3;
  l.bytes = bytes;
  l.bar = smem_offset(bar);
  if (config().tma_mode == 1) {
    land(l);
  } else {
    g_loads.push_back(l);
  }
}

void bulk_load(void* dst, const void* src, uint32_t bytes, void* bar) {
  const uint32_t off = smem_offset(dst);
  if (off % 16 || reinterpret_cast<uintptr_t>(src) % 16 || bytes % 16 || bytes == 0)
    fail("bulk copy needs 16-byte aligned addresses and a size multiple of 16 (shared %u, %u bytes)", off, bytes);
  if (!detail::in_smem(dst, bytes)) fail("bulk copy overruns shared memory");
  if (!detail::in_buffer(src, bytes)) fail("bulk copy source %p (+%u) is in no buffer", src, bytes);
  mbar_at(bar, "bulk copy");
  Load l{};
  l.dst = off;
  l.tensor = false;
  l.src = static_cast<const unsigned char*>(src);
  l.bytes = bytes;
  l.bar = smem_offset(bar);
  if (config().tma_mode == 1) {
    land(l);
  } else {
    g_loads.push_back(l);
  }
}

void tma_store(const void* desc, const void* src, int c0, int c1, int c2, int c3) {
  const TmaMap& m = map_of(desc);
  const uint32_t off = smem_offset(src);
  if (off % 1024) fail("TMA store source (shared offset %u) is not 1024-byte aligned", off);
  const uint32_t bytes = m.box[0] * m.box[1] * m.box[2] * m.box[3] * m.elem_bytes;
  if (!detail::in_smem(src, bytes)) fail("TMA store of %u bytes at shared offset %u overruns shared memory", bytes, off);
  check_ordered(off, bytes, g_clock[size_t(current())], "TMA store");
  Store s{m, off, {c0, c1, c2, c3}};
  g_store_open[size_t(current())].push_back(s);
}

void tma_store_commit() {
  auto& open = g_store_open[size_t(current())];
  auto& groups = g_store_groups[size_t(current())];
  groups.insert(groups.end(), open.begin(), open.end());
  open.clear();
}

void tma_store_wait() {
  auto& groups = g_store_groups[size_t(current())];
  if (!g_store_open[size_t(current())].empty()) fail("cp.async.bulk.wait_group with TMA stores not committed");
  const unsigned char* smem = detail::smem_data();
  for (const Store& s : groups) {
    if (s.reduce_dst) {
      check_fenced(s.src, s.reduce_bytes, "bulk reduction");
      for (uint32_t i = 0; i < s.reduce_bytes / 4; ++i) {
        float v;
        std::memcpy(&v, smem + s.src + 4 * i, 4);
        s.reduce_dst[i] += v;
      }
      continue;
    }
    const TmaMap& m = s.map;
    const uint32_t eb = m.elem_bytes;
    for_each_box_element(m, s.c, [&](uint32_t idx, bool in, uint64_t g) {
      const uint32_t so = swizzle128(s.src + idx * eb);
      check_fenced(so, eb, "TMA store");
      if (!in) return;  // clipped
      unsigned char* dst = const_cast<unsigned char*>(m.base) + g;
      if (!detail::in_buffer(dst, eb)) fail("TMA store writes outside its tensor's buffer");
      std::memcpy(dst, smem + so, eb);
    });
  }
  groups.clear();
}

void bulk_reduce_add(float* dst, const void* src, uint32_t bytes) {
  const uint32_t off = smem_offset(src);
  if (off % 16 || reinterpret_cast<uintptr_t>(dst) % 16 || bytes % 16 || bytes == 0)
    fail("bulk reduction needs 16-byte aligned addresses and a size multiple of 16 (shared %u, %u bytes)", off, bytes);
  if (!detail::in_smem(src, bytes)) fail("bulk reduction source overruns shared memory");
  if (!detail::in_buffer(dst, bytes)) fail("bulk reduction destination %p (+%u) is in no buffer", static_cast<void*>(dst), bytes);
  check_ordered(off, bytes, g_clock[size_t(current())], "bulk reduction");
  Store s{};
  s.src = off;
  s.reduce_dst = dst;
  s.reduce_bytes = bytes;
  g_store_open[size_t(current())].push_back(s);
}

void fence_proxy_async() {
  const int t = current();
  for (uint32_t w : g_unfenced_by[size_t(t)])
    if (g_unfenced[w] == t) g_unfenced[w] = -1;
  g_unfenced_by[size_t(t)].clear();
}

void named_barrier(int id, int threads, bool wait) {
  if (id < 1 || id > 15) fail("named barrier id %d (1..15; 0 is __syncthreads)", id);
  if (threads % 32 || threads <= 0 || threads > detail::block_threads())
    fail("named barrier %d with %d threads", id, threads);
  Named& b = g_named[size_t(id)];
  const int t = current();
  if (b.count == 0) {
    b.threads = threads;
    b.clock.assign(g_clock.size(), 0);
    b.waiters.clear();
  }
  if (b.threads != threads) fail("named barrier %d used with %d and %d threads", id, b.threads, threads);
  merge_clock(b.clock, g_clock[size_t(t)]);
  ++g_clock[size_t(t)][size_t(t)];  // later writes are not covered by this arrival
  if (wait) b.waiters.push_back(t);
  const uint64_t my = b.gen;
  if (++b.count == threads) {
    for (int u : b.waiters) merge_clock(g_clock[size_t(u)], b.clock);
    b.count = 0;
    ++b.gen;
    progress();
    return;
  }
  if (!wait) return;
  while (b.gen == my) yield();
}

void wgmma_fence() { g_fenced[size_t(current())] = true; }

void wgmma(bool bf16, int n, float* d, uint64_t desc_a, const uint32_t* a_regs, uint64_t desc_b, bool tnsp_a,
           bool tnsp_b, bool accumulate) {
  const int t = current();
  if (!g_fenced[size_t(t)]) fail("wgmma.mma_async without a wgmma.fence since this thread's last wgmma.wait_group");
  if (n < 8 || n > 256 || n % 8) fail("wgmma with N = %d", n);
  Group& g = my_group();
  const int l = t % 128;
  if (g.count == 0) {
    g.desc_a = desc_a;
    g.desc_b = desc_b;
    g.n = n;
    g.bf16 = bf16;
    g.tnsp_a = tnsp_a;
    g.tnsp_b = tnsp_b;
    g.accumulate = accumulate;
    g.rs = a_regs != nullptr;
  } else if (g.desc_b != desc_b || g.n != n || g.bf16 != bf16 || g.tnsp_b != tnsp_b || g.accumulate != accumulate ||
             g.rs != (a_regs != nullptr) || (!g.rs && (g.desc_a != desc_a || g.tnsp_a != tnsp_a))) {
    fail("wgmma operands differ between threads of one warpgroup");
  }
  g.d[l] = d;
  g.a_regs[l] = a_regs;
  collective(g, 1, "wgmma.mma_async", [&] {
    Op* op = new Op();
    op->n = g.n;
    op->bf16 = g.bf16;
    op->accumulate = g.accumulate;
    op->a.assign(64 * 16, 0.0);
    op->b.assign(size_t(16) * g.n, 0.0);
    std::vector<uint32_t> wg_clock(g_clock.size(), 0);
    for (int q = 0; q < 128; ++q) merge_clock(wg_clock, g_clock[size_t((current() / 128) * 128 + q)]);
    auto read = [&](uint32_t off, const char* what) {
      const uint16_t h = smem_u16(off, what);
      check_fenced(off, 2, what);
      check_ordered(off, 2, wg_clock, what);
      op->read_off.push_back(off);
      op->read_val.push_back(h);
      return double(from_half(g.bf16, h));
    };
    if (g.rs) {
      for (int q = 0; q < 128; ++q) {
        const int w = q / 32, gg = (q % 32) / 4, tt = q % 4;
        std::memcpy(op->a_saved[q], g.a_regs[q], 16);
        op->a_regs[q] = g.a_regs[q];
        for (int r = 0; r < 4; ++r)
          for (int h = 0; h < 2; ++h) {
            const int row = 16 * w + gg + (r & 1) * 8, k = 2 * tt + (r >> 1) * 8 + h;
            const uint16_t bits = uint16_t(h ? op->a_saved[q][r] >> 16 : op->a_saved[q][r] & 0xffffu);
            op->a[size_t(row) * 16 + k] = from_half(g.bf16, bits);
          }
      }
    } else {
      for (int q = 0; q < 128; ++q) op->a_regs[q] = nullptr;
      for (int row = 0; row < 64; ++row)
        for (int k = 0; k < 16; ++k)
          op->a[size_t(row) * 16 + k] = read(operand_offset(g.desc_a, g.tnsp_a, row, k, "wgmma A"), "wgmma A");
    }
    for (int c = 0; c < g.n; ++c)
      for (int k = 0; k < 16; ++k)
        op->b[size_t(k) * g.n + c] = read(operand_offset(g.desc_b, g.tnsp_b, c, k, "wgmma B"), "wgmma B");
    const int nh = g.n / 2;
    op->saved.assign(size_t(128) * nh, 0.f);
    for (int q = 0; q < 128; ++q) {
      op->d[q] = g.d[q];
      auto it = g_inflight.find(g.d[q]);
      op->chained[q] = it != g_inflight.end();
      if (op->chained[q]) {
        ++it->second.first;
      } else {
        std::memcpy(&op->saved[size_t(q) * nh], g.d[q], sizeof(float) * size_t(nh));
        g_inflight[g.d[q]] = {1, {}};
        const uint32_t poison = 0x7fc0dead;
        for (int i = 0; i < nh; ++i) std::memcpy(&g.d[q][i], &poison, 4);
      }
    }
    g.open.push_back(op);
  });
}

void wgmma_commit() {
  Group& g = my_group();
  collective(g, 2, "wgmma.commit_group", [&] {
    g.committed.push_back(g.open);
    g.open.clear();
  });
}

void wgmma_wait(int pending) {
  Group& g = my_group();
  g_fenced[size_t(current())] = false;
  if (g.count == 0) g.wait_n = pending;
  if (g.wait_n != pending) fail("wgmma.wait_group with different counts in one warpgroup");
  collective(g, 3, "wgmma.wait_group", [&] {
    while (int(g.committed.size()) > pending) {
      for (Op* op : g.committed.front()) retire(op);
      g.committed.erase(g.committed.begin());
    }
  });
}

}  // namespace emu
}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
