// A small fork-join pool for the per-rank compute threads (`--threads`).
//
// One decode step calls the pool a few hundred times (every matmul, every attention layer), so a
// call must cost microseconds: workers spin briefly on a generation counter before they sleep,
// and the calling thread always takes a share of the work itself. With one thread the pool is a
// plain function call.
//
// Determinism: ParallelFor hands out fixed, contiguous ranges; kernels that give each output a
// fixed accumulation order (kernels/matmul.h) therefore produce the same bits at any thread
// count.
#ifndef SHARDLM_BASE_THREAD_POOL_H_
#define SHARDLM_BASE_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace shardlm {

class ThreadPool {
 public:
  // `threads` ≥ 1 counts the calling thread: ThreadPool(1) starts no worker.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(t) for every t in [0, tasks) and returns when all have finished. The calling thread
  // runs tasks too. Not reentrant: fn must not call Run on the same pool.
  void Run(int64_t tasks, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();
  void Drain();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleeping_{0};
  std::atomic<int> acked_{0};  // workers done with the current generation
  int64_t tasks_ = 0;
  const std::function<void(int64_t)>* fn_ = nullptr;
};

// The process-wide compute pool used by the kernels. Size 1 until SetComputeThreads is called
// (at start-up, before any kernel runs).
void SetComputeThreads(int threads);
ThreadPool& ComputePool();
int ComputeThreads();

// Compute threads per rank that fill this host's cores without oversubscribing them: the CPUs
// this process may run on (its affinity mask, which mpirun's binding narrows) divided by the
// ranks on this host (OpenMPI's OMPI_COMM_WORLD_LOCAL_SIZE, 1 outside mpirun), at least 1.
int AutoComputeThreads();

// Splits [0, n) into at most ComputeThreads() contiguous ranges whose boundaries are multiples of
// `align` (except the end) and runs fn(begin, end) for each on the compute pool. Ranges depend
// only on n, align and the thread count. Runs fn(0, n) inline when one range is enough, and
// when called from inside another ParallelFor's fn (the pool is not reentrant). `fn` is taken
// by reference, not copied: a lambda with many captures costs no allocation (the decode loop
// calls this a few hundred times per step).
void ParallelFor(int64_t n, int64_t align, absl::FunctionRef<void(int64_t, int64_t)> fn);

// Runs fn once on the calling thread and once on every thread of the compute pool: for
// start-up work that must happen on each thread, such as growing thread-local scratch so that
// the decode loop never allocates. (The pool hands tasks to whichever thread asks first, so a
// thread that is slow to wake may run none of a step's tasks for a while; its scratch would
// otherwise first grow mid-decode.)
void OnEveryComputeThread(absl::FunctionRef<void()> fn);

}  // namespace shardlm

#endif  // SHARDLM_BASE_THREAD_POOL_H_
