// The llmpre side of cute_gmma_check.cpp: the kernels' layout and descriptor
// helpers (arch_sm90.cuh, emulator build) and the emulator's reading of a
// descriptor, behind plain functions, in a translation unit of its own (the
// emulator defines CUDA's host types, which CuTe's translation unit gets from
// the CUDA headers).
#include <cstdint>

#include "flash_attention/emu/emu_internal.h"
#include "flash_attention/arch_sm90.cuh"

namespace fa = llmpre::cuda::fa;

uint32_t llmpre_sw128_offset(int r, int c, int rows) { return fa::sw128_offset(r, c, rows); }
uint64_t llmpre_kmajor_desc(uint32_t address) { return fa::kmajor_desc(address); }
uint64_t llmpre_mnmajor_desc(uint32_t address, int panel_rows) { return fa::mnmajor_desc(address, panel_rows); }
uint32_t llmpre_operand_offset(uint64_t desc, bool mn_major, int row, int k) {
  return fa::emu::detail::wgmma_operand_offset(desc, mn_major, row, k);
}
