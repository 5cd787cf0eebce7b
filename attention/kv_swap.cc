#include "attention/kv_swap.h"

#include <fcntl.h>
#include <isa-l/crc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace shardlm {
namespace {

// CRC32C of `n` bytes; crc32_iscsi takes an int length, so long slots go in pieces.
uint32_t Crc32c(const unsigned char* p, int64_t n) {
  uint32_t crc = 0xffffffffu;
  while (n > 0) {
    const int piece = static_cast<int>(std::min<int64_t>(n, INT_MAX / 2));
    crc = crc32_iscsi(const_cast<unsigned char*>(p), piece, crc);
    p += piece;
    n -= piece;
  }
  return crc;
}

// Full pread/pwrite: false on an error or a short transfer (end of a truncated file).
bool WriteAll(int fd, const unsigned char* p, int64_t n, int64_t offset) {
  while (n > 0) {
    const ssize_t w = pwrite(fd, p, static_cast<size_t>(n), offset);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= w;
    offset += w;
  }
  return true;
}
bool ReadAll(int fd, unsigned char* p, int64_t n, int64_t offset) {
  while (n > 0) {
    const ssize_t r = pread(fd, p, static_cast<size_t>(n), offset);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= r;
    offset += r;
  }
  return true;
}

}  // namespace

absl::StatusOr<SwapFault> ParseSwapFault(const std::string& name) {
  if (name.empty() || name == "none") return SwapFault::kNone;
  if (name == "flip-memory") return SwapFault::kFlipMemory;
  if (name == "flip-file") return SwapFault::kFlipFile;
  if (name == "truncate-file") return SwapFault::kTruncateFile;
  return absl::InvalidArgumentError(absl::StrCat(
      "--swap-fault must be none, flip-memory, flip-file or truncate-file, got \"", name, "\""));
}

int64_t KvSwap::SlotBytes(const PagedKvCache& cache) {
  return cache.layers() * cache.page_size() * cache.row_bytes();
}

KvSwap::KvSwap(int64_t slot_bytes, int64_t memory_slots, int64_t file_slots)
    : slot_bytes_(slot_bytes),
      memory_slots_(memory_slots),
      file_slots_(file_slots),
      crc_(static_cast<size_t>(memory_slots + file_slots), 0),
      written_(static_cast<size_t>(memory_slots + file_slots), false) {}

absl::StatusOr<std::unique_ptr<KvSwap>> KvSwap::Create(const PagedKvCache& cache,
                                                       int64_t memory_slots, int64_t file_slots,
                                                       const std::string& dir) {
  CHECK(memory_slots >= 0 && file_slots >= 0);
  const int64_t slot_bytes = SlotBytes(cache);
  std::unique_ptr<KvSwap> swap(new KvSwap(slot_bytes, memory_slots, file_slots));
  if (memory_slots > 0 && slot_bytes > 0) {
    void* p = mmap(nullptr, static_cast<size_t>(memory_slots * slot_bytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot map the KV swap space, ",
                                                       memory_slots * slot_bytes >> 20, " MiB (",
                                                       std::strerror(errno), "); lower --swap-mb"));
    }
    swap->memory_ = static_cast<unsigned char*>(p);
  }
  if (file_slots > 0) {
    std::string path = absl::StrCat(dir, "/shardlm-swap-XXXXXX");
    swap->fd_ = mkstemp(path.data());
    if (swap->fd_ < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create a swap file in --swap-dir ", dir, ": ", std::strerror(errno)));
    }
    unlink(path.c_str());  // the open descriptor keeps it until the job ends
    swap->staging_.resize(static_cast<size_t>(slot_bytes));
  }
  return swap;
}

KvSwap::~KvSwap() {
  if (memory_ != nullptr) munmap(memory_, static_cast<size_t>(memory_slots_ * slot_bytes_));
  if (fd_ >= 0) close(fd_);
}

void KvSwap::Out(PagedKvCache& cache, int32_t page, int64_t slot) {
  CHECK(slot >= 0 && slot < slots());
  CHECK(page >= 0 && page < cache.num_pages());
  const bool in_memory = slot < memory_slots_;
  unsigned char* dst = in_memory ? MemorySlot(slot) : staging_.data();
  const int64_t page_bytes = cache.page_size() * cache.row_bytes();
  for (int64_t l = 0; l < cache.layers(); ++l) {
    std::memcpy(dst + l * page_bytes, cache.Layer(l).Page(page), static_cast<size_t>(page_bytes));
  }
  crc_[slot] = Crc32c(dst, slot_bytes_);
  written_[slot] =
      in_memory || WriteAll(fd_, dst, slot_bytes_, (slot - memory_slots_) * slot_bytes_);
  ApplyFault(slot);
}

bool KvSwap::In(PagedKvCache& cache, int64_t slot, int32_t page) {
  CHECK(slot >= 0 && slot < slots());
  CHECK(page >= 0 && page < cache.num_pages());
  if (!written_[slot]) return false;
  written_[slot] = false;
  const bool in_memory = slot < memory_slots_;
  unsigned char* src = in_memory ? MemorySlot(slot) : staging_.data();
  if (!in_memory && !ReadAll(fd_, src, slot_bytes_, (slot - memory_slots_) * slot_bytes_)) {
    return false;
  }
  if (Crc32c(src, slot_bytes_) != crc_[slot]) return false;
  const int64_t page_bytes = cache.page_size() * cache.row_bytes();
  for (int64_t l = 0; l < cache.layers(); ++l) {
    std::memcpy(cache.Layer(l).Page(page), src + l * page_bytes, static_cast<size_t>(page_bytes));
  }
  return true;
}

void KvSwap::ApplyFault(int64_t slot) {
  const bool in_memory = slot < memory_slots_;
  const int64_t offset = (slot - memory_slots_) * slot_bytes_;
  switch (fault_) {
    case SwapFault::kNone:
      return;
    case SwapFault::kFlipMemory:
      if (!in_memory || slot_bytes_ == 0) return;
      MemorySlot(slot)[slot_bytes_ / 2] ^= 0x10;
      break;
    case SwapFault::kFlipFile: {
      if (in_memory || slot_bytes_ == 0) return;
      unsigned char byte = 0;
      if (!ReadAll(fd_, &byte, 1, offset + slot_bytes_ / 2)) return;
      byte ^= 0x10;
      (void)WriteAll(fd_, &byte, 1, offset + slot_bytes_ / 2);
      break;
    }
    case SwapFault::kTruncateFile:
      if (in_memory) return;
      if (ftruncate(fd_, offset + slot_bytes_ / 2) != 0) return;
      break;
  }
  fault_ = SwapFault::kNone;  // once
}

}  // namespace shardlm
