#include "base/malloc_tuning.h"

#include <malloc.h>

namespace shardlm {

void TuneMalloc() {
  // Fixed values also turn off glibc's dynamic threshold adjustment.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
}

}  // namespace shardlm
