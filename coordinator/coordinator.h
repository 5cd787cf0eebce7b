// The coordinator and the step loop (DESIGN §5): one loop serves every job. Clients — the
// `decode` and `score` file jobs, the HTTP server to come — submit sequences to rank 0's
// Coordinator and receive each one's result when it finishes; every rank runs RunSteps.
//
// One step: rank 0 schedules (running sequences first, then admissions whose pages fit,
// prompts in chunks under max_batch_tokens) into a StepPlan and broadcasts it; every rank
// appends the plan's pages to its block tables and runs Model::Forward over the ragged batch;
// rank 0 receives the logits of the rows that need them, samples, records prompt logprobs,
// and hands finished sequences to the client.
#ifndef SHARDLM_COORDINATOR_COORDINATOR_H_
#define SHARDLM_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "attention/kv_cache.h"
#include "attention/kv_swap.h"
#include "comm/comm.h"
#include "coordinator/sampler.h"
#include "coordinator/scheduler.h"
#include "coordinator/sequence.h"
#include "engine/model.h"
#include "proto/shardlm.pb.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

// Rank 0's state: sequences, scheduler, sampling. Free of MPI.
class Coordinator {
 public:
  // Receives every finished sequence; an error stops the job.
  using Sink = std::function<absl::Status(SequenceResult)>;
  // `tokenizer` (may be null) turns generated tokens into text, for results and stop strings.
  Coordinator(const SchedulerOptions& options, const ModelDims& dims, Sink sink,
              const Tokenizer* tokenizer = nullptr);

  // Receives each generated token as it is sampled (streaming clients): its logprob and the
  // text it completes — held back while it may be part of a character still incomplete or the
  // start of a stop string, so the concatenated pieces are always a prefix of the final text
  // (the Sink's SequenceResult::text; what they lack is delivered there).
  using TokenSink =
      std::function<void(int64_t handle, int32_t token, double logprob, std::string_view text)>;
  void SetTokenSink(TokenSink sink) { token_sink_ = std::move(sink); }

  // Queues a sequence. The caller has validated it; one sequence of the model's maximum
  // length always fits (checked at start-up).
  void Submit(int64_t handle, SequenceRequest request);
  // Ends a queued or running sequence now (its pages free for the next plan): the Sink gets
  // what it generated so far with `reason` as finish_reason. False when there is no such
  // sequence (it finished already). Call between steps.
  absl::StatusOr<bool> Cancel(int64_t handle, const char* reason);
  bool Idle() const { return scheduler_.Idle(); }
  int64_t running() const { return scheduler_.running(); }
  int64_t waiting() const { return scheduler_.waiting(); }

  // Plans the next step into `plan`: a shutdown plan once idle.
  void Plan(StepPlan* plan);
  // After the forward pass of the last plan: `logits` holds [rows, vocab], the rows in plan
  // order as SeqStep describes.
  absl::Status AfterStep(const std::vector<float>& logits);

  int64_t generated_tokens() const { return generated_tokens_; }
  int64_t computed_tokens() const { return computed_tokens_; }  // through the forward pass
  int64_t free_pages() const { return scheduler_.free_pages(); }
  int64_t total_pages() const { return total_pages_; }
  int64_t free_swap_slots() const { return scheduler_.free_swap_slots(); }
  int64_t total_swap_slots() const { return total_swap_slots_; }
  int64_t total_preemptions() const { return scheduler_.total_preemptions(); }
  int64_t swapped_out() const { return scheduler_.swapped_out(); }
  int64_t swap_in_failures() const { return scheduler_.swap_in_failures(); }
  int64_t recomputed_tokens() const { return scheduler_.recomputed_tokens(); }
  // After a step whose plan had swap_in copies: the ranks' verdicts (Scheduler::SwapInChecked);
  // each refused copy is reported on stderr.
  void SwapInChecked(std::span<const int64_t> failed);
  // Prompt tokens taken from the prefix cache at admission, and those computed (Scheduler).
  int64_t prefix_hit_tokens() const { return scheduler_.prefix_hit_tokens(); }
  int64_t prefix_miss_tokens() const { return scheduler_.prefix_miss_tokens(); }

 private:
  absl::Status Finish(Sequence* seq, const char* reason);
  // Hands a removed sequence to the Sink.
  absl::Status Deliver(std::unique_ptr<Sequence> done, const char* reason);

  // A generating sequence's text so far, when there is a tokenizer.
  struct Text {
    std::unique_ptr<StreamDecoder> stream;
    std::string text;
    bool cut = false;      // a stop string ended it
    size_t streamed = 0;   // bytes of `text` the TokenSink has had
  };

  const ModelDims& dims_;
  const Tokenizer* tokenizer_;
  Scheduler scheduler_;
  Sink sink_;
  TokenSink token_sink_;
  const int64_t total_pages_;
  const int64_t total_swap_slots_;
  // Per sequence (by Sequence::request_index = the client's handle): the request.
  std::unordered_map<int64_t, SequenceRequest> requests_;
  std::unordered_map<int64_t, std::vector<double>> prompt_logprobs_;
  std::unordered_map<int64_t, Text> texts_;
  std::vector<ScheduledSeq> slices_;  // of the last plan
  int64_t generated_tokens_ = 0;
  int64_t computed_tokens_ = 0;
};

// Every rank's side of a step: block tables over its own pool, the ragged batch, the
// forward pass. Reuses its buffers: a step of running sequences allocates nothing.
class StepRunner {
 public:
  StepRunner(Model& model, PagedKvCache& cache, KvSwap* swap, Comm& comm)
      : model_(model), cache_(cache), swap_(swap), comm_(comm) {}
  // On rank 0 `logits` becomes [rows, vocab]; elsewhere it is left empty. The plan's swap
  // copies run first; swap_in_failed() then holds, on every rank, which swap_in copies failed
  // their check on any rank (nonzero), in plan order.
  absl::Status Run(const StepPlan& plan, std::vector<float>* logits);
  const std::vector<int64_t>& swap_in_failed() const { return swap_in_failed_; }

 private:
  Model& model_;
  PagedKvCache& cache_;
  KvSwap* swap_;  // null: no swap space (the plan then has no copies)
  Comm& comm_;
  std::vector<int64_t> swap_in_failed_;
  // By seq_id: its pages as this rank's page ids, and (data-parallel attention) its page
  // group, i.e. the rank that holds its rows and attends for them.
  struct SeqPages {
    std::vector<int32_t> table;
    int32_t group = 0;
  };
  std::unordered_map<int64_t, SeqPages> block_tables_;
  ForwardBatch batch_;
};

// The loop, on every rank: rank 0 passes its coordinator (others nullptr), `after_step`
// (progress output) and `before_plan` (a live client's turn between steps: submit new
// requests, cancel, wait while there is nothing to do), both optional. Ends when the
// coordinator is idle at planning time, or at once on any rank's error (rank 0's own errors,
// `before_plan`'s too, are broadcast as a shutdown first, so no rank hangs).
absl::Status RunSteps(Model& model, PagedKvCache& cache, KvSwap* swap, Comm& comm,
                      Coordinator* coordinator,
                      const std::function<void()>& after_step = {},
                      const std::function<absl::Status()>& before_plan = {});

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_COORDINATOR_H_
