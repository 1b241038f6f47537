// Cross-check of the Hopper flash attention's shared-memory operands against
// CuTe (CUTLASS's layout algebra, host-only here), for every tile shape the
// kernels use:
//
//  - the tiles: element (row, col) of a [rows x cols] 16-bit tile in 64-column
//    panels with the 128-byte swizzle sits where CuTe's canonical GMMA layout
//    (Layout_K_SW128_Atom tiled to the shape, swizzle applied to the address)
//    puts it: sw128_offset() must agree;
//  - the descriptors: for each k16 slice, the wgmma descriptor the kernels
//    build (kmajor_desc / mnmajor_desc) must carry the layout type and the
//    stride fields CuTe's make_gmma_desc derives for the same slice, and the
//    emulator, reading that descriptor, must visit exactly the addresses of
//    CuTe's slice (K-major and M/N-major operands).
//
// Prints one line per failure and "checked N slices" at the end; exit 1 on
// any failure. Built by tests/cuda/test_flash_attention_cute.py. (On the host,
// CuTe cannot turn a pointer into a shared-memory address and says so with
// "ERROR: cast_smem_ptr_to_uint" for each descriptor: start addresses are
// compared through the element addresses instead.)
#include <cstdio>
#include <cstdint>
#include <vector>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

// llmpre_side.cpp
uint32_t llmpre_sw128_offset(int r, int c, int rows);
uint64_t llmpre_kmajor_desc(uint32_t address);
uint64_t llmpre_mnmajor_desc(uint32_t address, int panel_rows);
uint32_t llmpre_operand_offset(uint64_t desc, bool mn_major, int row, int k);

using namespace cute;
using T = cutlass::bfloat16_t;

namespace {

int failures = 0, slices = 0;
alignas(1024) unsigned char buf[1 << 17];

template <class Tensor>
uint32_t byte_of(Tensor const& t, int i, int j) {
  return uint32_t(reinterpret_cast<const unsigned char*>(raw_pointer_cast(&t(i, j))) - buf);
}

void fail(const char* what, int a, int b, int c, long got, long want) {
  if (failures < 20) std::printf("%s [%d %d %d]: llmpre %ld, CuTe %ld\n", what, a, b, c, got, want);
  ++failures;
}

// K-major tile: R rows (the M or N index), C columns (the K index).
template <int R, int C>
void check_kmajor() {
  auto layout = tile_to_shape(SM90::GMMA::Layout_K_SW128_Atom<T>{}, make_shape(Int<R>{}, Int<C>{}));
  Tensor t = make_tensor(make_smem_ptr(reinterpret_cast<T*>(buf)), layout);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      if (llmpre_sw128_offset(r, c, R) != byte_of(t, r, c)) fail("K-major tile offset", R, r, c, llmpre_sw128_offset(r, c, R), byte_of(t, r, c));
  for (int kk = 0; kk < C / 16; ++kk) {
    Tensor s = local_tile(t, make_shape(Int<R>{}, Int<16>{}), make_coord(0, kk));
    const uint64_t ours = llmpre_kmajor_desc(uint32_t((kk / 4) * R * 128 + (kk % 4) * 32));
    const cute::GmmaDescriptor theirs = SM90::GMMA::make_gmma_desc<SM90::GMMA::Major::K>(s);
    if (int(ours >> 62) != int(theirs.bitfield.layout_type_)) fail("K-major layout type", R, C, kk, long(ours >> 62), long(theirs.bitfield.layout_type_));
    if (((ours >> 32) & 0x3fff) != theirs.bitfield.stride_byte_offset_)
      fail("K-major SBO", R, C, kk, long((ours >> 32) & 0x3fff), long(theirs.bitfield.stride_byte_offset_));
    if (((ours >> 16) & 0x3fff) != theirs.bitfield.leading_byte_offset_)
      fail("K-major LBO", R, C, kk, long((ours >> 16) & 0x3fff), long(theirs.bitfield.leading_byte_offset_));
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < 16; ++k) {
        const uint32_t got = llmpre_operand_offset(ours, false, r, k);
        if (got != byte_of(s, r, k)) fail("K-major slice address", R, kk, r * 16 + k, got, byte_of(s, r, k));
      }
    ++slices;
  }
}

// M/N-major operand stored with K as rows: a [KR rows x MN cols] tile in
// 64-column panels; CuTe's view is (MN, K) with K tiled first.
template <int MN, int KR>
void check_mnmajor() {
  auto layout = tile_to_shape(SM90::GMMA::Layout_MN_SW128_Atom<T>{}, make_shape(Int<MN>{}, Int<KR>{}), Step<_2, _1>{});
  Tensor t = make_tensor(make_smem_ptr(reinterpret_cast<T*>(buf)), layout);
  for (int n = 0; n < MN; ++n)
    for (int k = 0; k < KR; ++k)
      if (llmpre_sw128_offset(k, n, KR) != byte_of(t, n, k)) fail("MN-major tile offset", MN, n, k, llmpre_sw128_offset(k, n, KR), byte_of(t, n, k));
  for (int kk = 0; kk < KR / 16; ++kk) {
    Tensor s = local_tile(t, make_shape(Int<MN>{}, Int<16>{}), make_coord(0, kk));
    const uint64_t ours = llmpre_mnmajor_desc(uint32_t(kk * 2048), KR);
    const cute::GmmaDescriptor theirs = SM90::GMMA::make_gmma_desc<SM90::GMMA::Major::MN>(s);
    if (int(ours >> 62) != int(theirs.bitfield.layout_type_)) fail("MN-major layout type", MN, KR, kk, long(ours >> 62), long(theirs.bitfield.layout_type_));
    if (((ours >> 32) & 0x3fff) != theirs.bitfield.stride_byte_offset_)
      fail("MN-major SBO", MN, KR, kk, long((ours >> 32) & 0x3fff), long(theirs.bitfield.stride_byte_offset_));
    if (MN > 64 && ((ours >> 16) & 0x3fff) != theirs.bitfield.leading_byte_offset_)
      fail("MN-major LBO", MN, KR, kk, long((ours >> 16) & 0x3fff), long(theirs.bitfield.leading_byte_offset_));
    for (int n = 0; n < MN; ++n)
      for (int k = 0; k < 16; ++k) {
        const uint32_t got = llmpre_operand_offset(ours, true, n, k);
        if (got != byte_of(s, n, k)) fail("MN-major slice address", MN, kk, n * 16 + k, got, byte_of(s, n, k));
      }
    ++slices;
  }
}

}  // namespace

int main() {
  // K-major: Q (BM = 128 x D), K (BN = 64/128 x D), dO / Q steps (64 x D) in the backward.
  check_kmajor<64, 64>();
  check_kmajor<64, 128>();
  check_kmajor<64, 256>();
  check_kmajor<128, 64>();
  check_kmajor<128, 128>();
  check_kmajor<128, 256>();
  // M/N-major: V (keys x D) in the forward, dO and Q (64 queries x D), dS^T
  // (128 keys x 64 queries) and K (128 keys x 64-column panel) in the backward.
  check_mnmajor<64, 64>();
  check_mnmajor<128, 64>();
  check_mnmajor<256, 64>();
  check_mnmajor<64, 128>();
  check_mnmajor<128, 128>();
  check_mnmajor<256, 128>();
  std::printf("checked %d slices, %d failures\n", slices, failures);
  return failures ? 1 : 0;
}
