#include "base/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

TEST(ThreadPool, RunsEveryTaskOnceAtEverySize) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t tasks : {0, 1, 2, 7, 64, 1000}) {
      std::vector<std::atomic<int>> hits(tasks);
      pool.Run(tasks, [&](int64_t t) { hits[t].fetch_add(1); });
      for (int64_t t = 0; t < tasks; ++t) ASSERT_EQ(hits[t].load(), 1) << threads << " " << t;
    }
  }
}

TEST(ThreadPool, ManyBackToBackCallsDoNotMixGenerations) {
  ThreadPool pool(3);
  for (int call = 0; call < 20000; ++call) {
    const int64_t tasks = 1 + call % 5;
    std::vector<int> hits(tasks, 0);  // each slot written by one task only
    pool.Run(tasks, [&](int64_t t) { hits[t] += call + 1; });
    for (int64_t t = 0; t < tasks; ++t) ASSERT_EQ(hits[t], call + 1) << call;
  }
}

TEST(ParallelFor, CoversRangeWithAlignedDisjointPieces) {
  for (int threads : {1, 2, 4}) {
    SetComputeThreads(threads);
    EXPECT_EQ(ComputeThreads(), threads);
    for (int64_t n : {0, 1, 5, 16, 17, 100, 1023}) {
      for (int64_t align : {1, 4, 16}) {
        std::vector<std::atomic<int>> hits(n);
        std::atomic<int> pieces{0};
        ParallelFor(n, align, [&](int64_t begin, int64_t end) {
          ASSERT_LT(begin, end);
          ASSERT_EQ(begin % align, 0);
          ASSERT_TRUE(end == n || end % align == 0);
          pieces.fetch_add(1);
          for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1);
        EXPECT_LE(pieces.load(), threads);
      }
    }
  }
  SetComputeThreads(1);
}

// A ParallelFor inside another's range runs inline on that thread and still covers its range.
TEST(ParallelFor, NestedCallRunsInline) {
  SetComputeThreads(3);
  constexpr int64_t kOuter = 6, kInner = 50;
  std::vector<std::atomic<int>> hits(kOuter * kInner);
  ParallelFor(kOuter, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      int pieces = 0;
      ParallelFor(kInner, 1, [&](int64_t b, int64_t e) {
        ++pieces;  // inline: no other thread touches it
        for (int64_t i = b; i < e; ++i) hits[o * kInner + i].fetch_add(1);
      });
      EXPECT_EQ(pieces, 1);
    }
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  SetComputeThreads(1);
}

TEST(AutoComputeThreadsTest, SplitsThisProcessCpusOverTheHostRanks) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cpus = CPU_COUNT(&set);
  const char* saved = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const std::string restore = saved != nullptr ? saved : "";
  unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  EXPECT_EQ(AutoComputeThreads(), cpus);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
  EXPECT_EQ(AutoComputeThreads(), std::max(1, cpus / 2));
  // More ranks than cores (oversubscribed): never below one thread.
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "100000", 1);
  EXPECT_EQ(AutoComputeThreads(), 1);
  // A malformed value counts as one rank.
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "x", 1);
  EXPECT_EQ(AutoComputeThreads(), cpus);
  if (saved != nullptr) {
    setenv("OMPI_COMM_WORLD_LOCAL_SIZE", restore.c_str(), 1);
  } else {
    unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  }
}

// Start-up work reaches the calling thread and every pool thread, whatever their timing.
TEST(ThreadPoolTest, OnEveryComputeThreadReachesEachThread) {
  for (const int threads : {1, 2, 3, 5}) {
    SetComputeThreads(threads);
    std::mutex mu;
    std::set<std::thread::id> seen;
    for (int rep = 0; rep < 20; ++rep) {
      seen.clear();
      OnEveryComputeThread([&] {
        std::lock_guard<std::mutex> lock(mu);
        seen.insert(std::this_thread::get_id());
      });
      // The pool's threads plus the caller (which runs tasks of its own pool too).
      EXPECT_GE(seen.size(), static_cast<size_t>(threads)) << threads;
      EXPECT_TRUE(seen.contains(std::this_thread::get_id()));
    }
  }
  SetComputeThreads(1);
}

}  // namespace
}  // namespace shardlm
