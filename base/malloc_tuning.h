// glibc malloc settings for ShardLM's long-lived processes.
#ifndef SHARDLM_BASE_MALLOC_TUNING_H_
#define SHARDLM_BASE_MALLOC_TUNING_H_

namespace shardlm {

// By default glibc serves each block above a moving threshold (128 KiB at start) with its own
// mmap and gives freed heap tops back to the kernel, so a process that repeatedly builds and
// drops large temporaries — tokenizing a long text: pieces, ids, normalized copies — pays the
// page faults of fresh memory every time (on the Llama 3 tokenizer this halved encode
// throughput). Blocks up to 32 MiB come from the heap and up to 128 MiB of free heap top is kept.
// Call once, first thing in main.
void TuneMalloc();

}  // namespace shardlm

#endif  // SHARDLM_BASE_MALLOC_TUNING_H_
