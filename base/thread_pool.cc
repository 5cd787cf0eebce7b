#include "base/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <thread>

#include "base/status.h"

namespace shardlm {
namespace {

// How long an idle worker spins on the generation counter before it sleeps. Long enough to
// bridge the gap between two matmuls of one layer, short enough not to steal a core from
// another rank for long when ranks oversubscribe the cores.
constexpr auto kSpin = std::chrono::microseconds(200);

}  // namespace

ThreadPool::ThreadPool(int threads) {
  CHECK_GE(threads, 1);
  workers_.reserve(threads - 1);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Drain() {
  const int64_t tasks = tasks_;
  const std::function<void(int64_t)>& fn = *fn_;
  for (int64_t t = next_.fetch_add(1); t < tasks; t = next_.fetch_add(1)) {
    fn(t);
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  while (true) {
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    while (generation_.load(std::memory_order_acquire) == seen &&
           std::chrono::steady_clock::now() < spin_until) {
      std::this_thread::yield();
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      sleeping_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleeping_.fetch_sub(1);
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    Drain();
    acked_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Run(int64_t tasks, const std::function<void(int64_t)>& fn) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_ = tasks;
    fn_ = &fn;
    done_.store(0);
    next_.store(0);
    acked_.store(0);
    generation_.fetch_add(1, std::memory_order_release);
  }
  if (sleeping_.load() > 0) wake_.notify_all();
  Drain();
  // Every worker acknowledges every generation, so none can still be reading tasks_, fn_ or
  // next_ of this call when the next call resets them.
  const int workers = static_cast<int>(workers_.size());
  while (done_.load(std::memory_order_acquire) < tasks ||
         acked_.load(std::memory_order_acquire) < workers) {
    std::this_thread::yield();
  }
}

namespace {
std::unique_ptr<ThreadPool>& GlobalPool() {
  static std::unique_ptr<ThreadPool> pool = std::make_unique<ThreadPool>(1);
  return pool;
}
}  // namespace

void SetComputeThreads(int threads) { GlobalPool() = std::make_unique<ThreadPool>(threads); }
ThreadPool& ComputePool() { return *GlobalPool(); }
int ComputeThreads() { return ComputePool().size(); }

int AutoComputeThreads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
  if (cpus <= 0) cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int local_ranks = 1;
  if (const char* env = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) {
    local_ranks = std::max(1, std::atoi(env));
  }
  return std::max(1, cpus / local_ranks);
}

namespace {
// Whether this thread is running a ParallelFor range: Run is not reentrant, so a nested
// ParallelFor (a kernel called from inside another's range) runs its range inline.
thread_local bool in_parallel_for = false;
}  // namespace

void ParallelFor(int64_t n, int64_t align, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  CHECK_GE(align, 1);
  const int64_t blocks = (n + align - 1) / align;
  const int64_t parts = std::min<int64_t>(ComputeThreads(), blocks);
  if (parts <= 1 || in_parallel_for) {
    if (n > 0) fn(0, n);
    return;
  }
  struct Split {
    int64_t n, align, blocks, parts;
    const absl::FunctionRef<void(int64_t, int64_t)>* fn;
  };
  const Split split{n, align, blocks, parts, &fn};
  // One captured pointer, so the std::function Run takes stores it inline: no allocation per
  // call (the decode loop calls this a few hundred times per step).
  ComputePool().Run(parts, [s = &split](int64_t p) {
    const int64_t begin = std::min(s->n, s->blocks * p / s->parts * s->align);
    const int64_t end = std::min(s->n, s->blocks * (p + 1) / s->parts * s->align);
    if (begin < end) {
      in_parallel_for = true;
      (*s->fn)(begin, end);
      in_parallel_for = false;
    }
  });
}

void OnEveryComputeThread(absl::FunctionRef<void()> fn) {
  fn();
  ThreadPool& pool = ComputePool();
  const int threads = pool.size();
  if (threads == 1) return;
  // One task per thread: each task waits until all have started, so no thread can run two,
  // and every thread runs one. The caller takes a task as well; the extra call there is
  // harmless for idempotent work.
  std::atomic<int> started{0};
  pool.Run(threads, [&](int64_t) {
    fn();
    started.fetch_add(1);
    while (started.load() < threads) std::this_thread::yield();
  });
}

}  // namespace shardlm
