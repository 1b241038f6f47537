// Memory hints for large kernel outputs.
#pragma once

#include <cstddef>

namespace llmpre::kernels {

// Asks the OS to back [p, p + bytes) with transparent huge pages, before the
// kernel first writes it. A large output freshly allocated by the framework is
// otherwise faulted in 4 KiB at a time: on this machine kind (THP "madvise"
// mode) writing a fresh 131 MB buffer took 123 ms with 4 KiB faults and 34 ms
// with huge pages, against 13 ms for memory already mapped. Only the 2 MiB
// pages wholly inside the range are advised; buffers under 8 MiB, other OSes
// and failures are left alone (it is only a hint).
void advise_huge_pages(void* p, size_t bytes);

}  // namespace llmpre::kernels
