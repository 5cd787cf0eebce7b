// Swap space of one rank for preempted sequences' KV pages (the KV manager, DESIGN §9): the
// coordinator picks the slots and the StepPlan carries the copies, so every rank moves its
// own shard of the same pages. A slot holds one page of every layer. The first slots live in
// an anonymous mapping (host memory, taken as slots are first written), the rest in a file
// under a directory (created and unlinked at once, so nothing is left behind).
//
// Every slot written carries the CRC32C (ISA-L's crc32_iscsi) of its bytes as they left the
// cache; a copy back that does not match it bit for bit (a flipped bit in memory or on disk,
// a short read of a truncated file, a failed write) is refused, and the caller recomputes
// the sequence instead.
#ifndef SHARDLM_ATTENTION_KV_SWAP_H_
#define SHARDLM_ATTENTION_KV_SWAP_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/kv_cache.h"

namespace shardlm {

// Faults a test can ask for, applied right after the next slot written (`shardlm
// --swap-fault`, not for production): flip one bit of the copy in memory or in the file,
// or cut the file short.
enum class SwapFault { kNone, kFlipMemory, kFlipFile, kTruncateFile };
absl::StatusOr<SwapFault> ParseSwapFault(const std::string& name);

class KvSwap {
 public:
  // Slots for `cache`'s pages: `memory_slots` in memory, then `file_slots` in a file under
  // `dir` (ignored when file_slots is 0).
  static absl::StatusOr<std::unique_ptr<KvSwap>> Create(const PagedKvCache& cache,
                                                        int64_t memory_slots, int64_t file_slots,
                                                        const std::string& dir);
  ~KvSwap();
  KvSwap(const KvSwap&) = delete;
  KvSwap& operator=(const KvSwap&) = delete;

  // Bytes of one slot (one page of every layer of `cache`).
  static int64_t SlotBytes(const PagedKvCache& cache);
  int64_t slots() const { return memory_slots_ + file_slots_; }

  // Copies page `page` of every layer into `slot` and records the CRC32C of the bytes.
  void Out(PagedKvCache& cache, int32_t page, int64_t slot);
  // Copies `slot` back into page `page` of every layer when its bytes match the recorded
  // CRC32C; false otherwise (the page then holds nothing usable).
  bool In(PagedKvCache& cache, int64_t slot, int32_t page);

  void InjectFault(SwapFault fault) { fault_ = fault; }

 private:
  KvSwap(int64_t slot_bytes, int64_t memory_slots, int64_t file_slots);
  // The slot's bytes in memory, for the memory slots.
  unsigned char* MemorySlot(int64_t slot) const { return memory_ + slot * slot_bytes_; }
  void ApplyFault(int64_t slot);

  int64_t slot_bytes_;
  int64_t memory_slots_;
  int64_t file_slots_;
  unsigned char* memory_ = nullptr;  // [memory_slots, slot_bytes], mapped
  int fd_ = -1;                      // the file of the file slots
  std::vector<unsigned char> staging_;  // a file slot on its way
  std::vector<uint32_t> crc_;           // [slots]
  std::vector<bool> written_;           // [slots]: Out completed (the write did not fail)
  SwapFault fault_ = SwapFault::kNone;
};

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_KV_SWAP_H_
