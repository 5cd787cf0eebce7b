// The step loop in steady state allocates nothing (CONVENTIONS 10): once every sequence is
// admitted and prefilled, a decode step — plan, broadcast, block tables, the forward pass of
// every family, logits, sampling — makes no heap allocation on any thread. Counted by
// replacing the global operator new in this test binary.
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/thread_pool.h"
#include "comm/comm.h"
#include "coordinator/coordinator.h"
#include "coordinator/handshake.h"
#include "engine/make_model.h"
#include "gtest/gtest.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};

void* Allocate(size_t size, size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(size == 0 ? 1 : size);
  } else if (posix_memalign(&p, align, size == 0 ? align : size) != 0) {
    p = nullptr;
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(size_t size) { return Allocate(size, 0); }
void* operator new[](size_t size) { return Allocate(size, 0); }
void* operator new(size_t size, std::align_val_t align) {
  return Allocate(size, static_cast<size_t>(align));
}
void* operator new[](size_t size, std::align_val_t align) {
  return Allocate(size, static_cast<size_t>(align));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }

namespace shardlm {
namespace {

// Runs decode steps of four sequences (one sampling with temperature, top-k and top-p) on one
// rank and returns the allocations made during steps warmup+1 … warmup+counted.
int64_t SteadyStateAllocations(const std::string& family, int threads) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/step_loop_", family);
  MakeModelOptions make;
  make.attention = family;
  make.preset = "tiny";
  make.seed = 5;
  EXPECT_TRUE(MakeModel(make, dir).ok());
  auto model = Model::Load(dir, 0, 1);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return -1;
  SetComputeThreads(threads);
  LocalComm comm;
  CacheOptions cache_options;
  cache_options.page_size = 4;
  cache_options.kv_cache_mb = 16;
  auto cache = StartUp(cache_options, **model, comm);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (!cache.ok()) return -1;
  (*model)->Reserve(512);

  constexpr int kWarmup = 6, kCounted = 20, kNewTokens = 40;
  std::vector<SequenceResult> results;
  results.reserve(8);
  Coordinator coordinator({(*cache)->num_pages(), 4, 32, 512}, (*model)->dims(),
                          [&](SequenceResult r) {
                            results.push_back(std::move(r));
                            return absl::OkStatus();
                          });
  for (int i = 0; i < 4; ++i) {
    SequenceRequest request;
    for (int t = 0; t < 5 + 9 * i; ++t) request.prompt.push_back((7 * t + i) % 250 + 1);
    request.max_new_tokens = kNewTokens;
    if (i == 3) request.sampling = {.temperature = 0.8, .top_k = 20, .top_p = 0.9, .seed = 3};
    coordinator.Submit(i, std::move(request));
  }
  int step = 0;
  const absl::Status status = RunSteps(**model, **cache, nullptr, comm, &coordinator, [&] {
    ++step;
    if (step == kWarmup) {
      g_allocations = 0;
      g_counting = true;
    } else if (step == kWarmup + kCounted) {
      g_counting = false;
    }
  });
  g_counting = false;
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(results.size(), 4u);  // all ran to max_new_tokens, after the counted steps
  for (const SequenceResult& r : results) EXPECT_EQ(r.generated.size(), size_t{kNewTokens});
  SetComputeThreads(1);
  std::filesystem::remove_all(dir);
  return g_allocations.load();
}

TEST(StepLoopTest, SteadyStateDecodeAllocatesNothing) {
  for (const char* family : {"gqa", "gta", "mla", "gla"}) {
    for (const int threads : {1, 2}) {
      SCOPED_TRACE(absl::StrCat(family, ", threads ", threads));
      EXPECT_EQ(SteadyStateAllocations(family, threads), 0);
    }
  }
}

// The counter counts: a step that admits sequences allocates (block tables, plan fields), so
// a loop whose counted window starts at step 0 must see allocations.
TEST(StepLoopTest, CounterSeesAllocations) {
  g_allocations = 0;
  g_counting = true;
  auto* v = new std::vector<int>(100);
  g_counting = false;
  delete v;
  EXPECT_GE(g_allocations.load(), 2);
}

}  // namespace
}  // namespace shardlm
