#include "coordinator/coordinator.h"

#include <algorithm>
#include <cstdio>

#include "base/status.h"
#include "base/text.h"

namespace shardlm {
namespace {

// The length of the longest end of `text` that is a proper prefix of a stop string: text a
// streaming client must not see yet, since the next token may complete the stop string.
size_t HeldForStop(std::string_view text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops) {
    for (size_t k = std::min(stop.size() - (stop.empty() ? 0 : 1), text.size()); k > held; --k) {
      if (text.substr(text.size() - k) == std::string_view(stop).substr(0, k)) {
        held = k;
        break;
      }
    }
  }
  return held;
}

}  // namespace

Coordinator::Coordinator(const SchedulerOptions& options, const ModelDims& dims, Sink sink,
                         const Tokenizer* tokenizer)
    : dims_(dims),
      tokenizer_(tokenizer),
      scheduler_(options),
      sink_(std::move(sink)),
      total_pages_(options.num_pages),
      total_swap_slots_(options.swap_slots) {}

void Coordinator::Submit(int64_t handle, SequenceRequest request) {
  auto seq = std::make_unique<Sequence>();
  seq->request_index = handle;
  seq->prompt_len = static_cast<int64_t>(request.prompt.size());
  // Room for every token it may generate: decode steps append without allocating.
  const int64_t max_len = std::min(seq->prompt_len + request.max_new_tokens, dims_.max_positions);
  seq->tokens.reserve(static_cast<size_t>(std::max(max_len, seq->prompt_len)));
  seq->tokens = request.prompt;
  seq->logprobs.reserve(static_cast<size_t>(max_len - seq->prompt_len + 1));
  seq->pages.reserve(static_cast<size_t>(scheduler_.PagesFor(max_len)));
  seq->prefill_only = request.max_new_tokens == 0;
  if (request.prompt_logprobs) {
    seq->score_positions = seq->prompt_len - 1;
    prompt_logprobs_[handle].assign(static_cast<size_t>(seq->prompt_len - 1), 0.0);
  }
  seq->sampler = std::make_unique<Sampler>(request.sampling);
  if (tokenizer_ != nullptr && request.max_new_tokens > 0) {
    texts_[handle].stream =
        std::make_unique<StreamDecoder>(*tokenizer_, /*skip_special_tokens=*/true);
  }
  requests_.emplace(handle, std::move(request));
  scheduler_.Enqueue(std::move(seq));
}

void Coordinator::Plan(StepPlan* plan) {
  if (scheduler_.Idle()) {
    slices_.clear();
    plan->Clear();
    plan->set_shutdown(true);
    return;
  }
  scheduler_.Schedule(plan, &slices_);
  CHECK(!slices_.empty());  // one sequence alone always fits (checked at start-up)
}

absl::Status Coordinator::AfterStep(const std::vector<float>& logits) {
  scheduler_.Computed(slices_);
  const int64_t vocab = dims_.vocab;
  int64_t row = 0;
  for (const ScheduledSeq& s : slices_) {
    Sequence* seq = s.seq;
    computed_tokens_ += s.count;
    // Prompt logprobs: position p predicts prompt token p + 1. Indexed by position, so a
    // preempted sequence's recomputation overwrites the same entries.
    if (s.score_tokens > 0) {
      std::vector<double>& out = prompt_logprobs_[seq->request_index];
      for (int64_t i = 0; i < s.score_tokens; ++i, ++row) {
        const int64_t pos = s.start_pos + i;
        out[pos] = LogSoftmaxAt(logits.data() + row * vocab, vocab, seq->tokens[pos + 1]);
      }
    }
    if (s.want_logits) {
      // The sampled row is the slice's last token: its own row unless a score row it was.
      const int64_t sample_row = s.score_tokens == s.count ? row - 1 : row++;
      const SequenceRequest& request = requests_.at(seq->request_index);
      const Sample sample = seq->sampler->Next(logits.data() + sample_row * vocab, vocab);
      seq->tokens.push_back(sample.token);
      seq->logprobs.push_back(sample.logprob);
      ++generated_tokens_;
      bool stop_string = false;
      if (auto it = texts_.find(seq->request_index); it != texts_.end()) {
        Text& t = it->second;
        const std::string piece = t.stream->Next(sample.token);
        // The earliest stop string that ends in the new piece; the text keeps what is before it.
        size_t longest = 0;
        for (const std::string& stop : request.stop) longest = std::max(longest, stop.size());
        const size_t from = t.text.size() >= longest ? t.text.size() - longest + 1 : 0;
        t.text += piece;
        size_t cut = std::string::npos;
        for (const std::string& stop : request.stop) cut = std::min(cut, t.text.find(stop, from));
        if (cut != std::string::npos) {
          t.text.resize(cut);
          t.cut = stop_string = true;
        }
      }
      if (token_sink_) {
        std::string_view piece;
        if (auto it = texts_.find(seq->request_index); it != texts_.end()) {
          Text& t = it->second;
          const size_t safe = t.cut ? t.text.size() : t.text.size() - HeldForStop(t.text, request.stop);
          if (safe > t.streamed) {
            piece = std::string_view(t.text).substr(t.streamed, safe - t.streamed);
            t.streamed = safe;
          }
        }
        token_sink_(seq->request_index, sample.token, sample.logprob, piece);
      }
      if (stop_string || request.stop_ids.count(sample.token)) {
        RETURN_IF_ERROR(Finish(seq, "stop"));
      } else if (seq->generated() >= request.max_new_tokens ||
                 static_cast<int64_t>(seq->tokens.size()) >= dims_.max_positions) {
        RETURN_IF_ERROR(Finish(seq, "length"));
      }
    } else if (seq->prefill_only && seq->num_computed == seq->prompt_len) {
      RETURN_IF_ERROR(Finish(seq, "prompt"));
    }
  }
  CHECK_EQ(row * vocab, static_cast<int64_t>(logits.size()));
  return absl::OkStatus();
}

absl::StatusOr<bool> Coordinator::Cancel(int64_t handle, const char* reason) {
  std::unique_ptr<Sequence> seq = scheduler_.Remove(handle);
  if (seq == nullptr) return false;
  RETURN_IF_ERROR(Deliver(std::move(seq), reason));
  return true;
}

absl::Status Coordinator::Finish(Sequence* seq, const char* reason) {
  return Deliver(scheduler_.Finish(seq), reason);
}

absl::Status Coordinator::Deliver(std::unique_ptr<Sequence> done, const char* reason) {
  SequenceResult result;
  result.handle = done->request_index;
  result.prompt_len = done->prompt_len;
  result.generated.assign(done->tokens.begin() + done->prompt_len, done->tokens.end());
  result.logprobs = std::move(done->logprobs);
  if (auto it = prompt_logprobs_.find(result.handle); it != prompt_logprobs_.end()) {
    result.prompt_logprobs = std::move(it->second);
    prompt_logprobs_.erase(it);
  }
  result.finish_reason = reason;
  if (auto it = texts_.find(result.handle); it != texts_.end()) {
    result.has_text = true;
    result.text = std::move(it->second.text);
    // Held-back bytes belong to the text unless a stop string cut it.
    if (!it->second.cut) result.text += it->second.stream->Finish();
    result.text = ReplaceInvalidUtf8(result.text);
    texts_.erase(it);
  }
  requests_.erase(result.handle);
  return sink_(std::move(result));
}

void Coordinator::SwapInChecked(std::span<const int64_t> failed) {
  for (int64_t request : scheduler_.SwapInChecked(failed)) {
    std::fprintf(stderr,
                 "shardlm: a swapped KV page of request %lld failed its CRC32C check on the way "
                 "back; the request is recomputed\n",
                 static_cast<long long>(request));
  }
}

absl::Status StepRunner::Run(const StepPlan& plan, std::vector<float>* logits) {
  if (plan.swap_out_size() > 0 || plan.swap_in_size() > 0) {
    CHECK_MSG(swap_ != nullptr, "the plan moves pages to swap but this rank has no swap space");
    for (const SwapCopy& c : plan.swap_out()) swap_->Out(cache_, c.page(), c.slot());
    swap_in_failed_.clear();
    for (const SwapCopy& c : plan.swap_in()) {
      swap_in_failed_.push_back(swap_->In(cache_, c.slot(), c.page()) ? 0 : 1);
    }
    if (!swap_in_failed_.empty()) RETURN_IF_ERROR(comm_.AllReduceMax(swap_in_failed_));
  }
  // Data-parallel attention: the plan's page ids count every rank's pool, group g's pages
  // being g·num_pages + this rank's ids (Scheduler page groups).
  const bool dp = model_.plan().data_parallel_attention();
  const int32_t group_base = dp ? static_cast<int32_t>(comm_.rank() * cache_.num_pages()) : 0;
  for (int64_t id : plan.released()) block_tables_.erase(id);
  for (const SeqStep& s : plan.seqs()) {
    const auto [it, admitted] = block_tables_.try_emplace(s.seq_id());  // a new id: admission
    SeqPages& pages = it->second;
    if (admitted) pages.group = s.page_group();
    if (s.max_pages() > 0) pages.table.reserve(static_cast<size_t>(s.max_pages()));
    for (int32_t page : s.new_pages()) pages.table.push_back(page - group_base);
  }
  // Block tables do not move during the step (the map's nodes are stable), so the slots'
  // spans into them stay valid.
  batch_.token_ids.clear();
  batch_.slots.clear();
  batch_.logit_rows.clear();
  batch_.attention_rows.clear();
  for (const SeqStep& s : plan.seqs()) {
    const SeqPages& pages = block_tables_.at(s.seq_id());
    const bool attends = dp && pages.group == comm_.rank();
    for (int i = 0; i < s.tokens_size(); ++i) {
      const int32_t row = static_cast<int32_t>(batch_.slots.size());
      if (attends) batch_.attention_rows.push_back(row);
      batch_.token_ids.push_back(s.tokens(i));
      batch_.slots.push_back({pages.table, s.start_pos() + i});
      if (i < s.score_tokens() || (s.want_logits() && i == s.tokens_size() - 1)) {
        batch_.logit_rows.push_back(row);
      }
    }
  }
  return model_.Forward(batch_, cache_, comm_, logits);
}

absl::Status RunSteps(Model& model, PagedKvCache& cache, KvSwap* swap, Comm& comm,
                      Coordinator* coordinator, const std::function<void()>& after_step,
                      const std::function<absl::Status()>& before_plan) {
  CHECK_EQ(comm.rank() == 0, coordinator != nullptr);
  StepRunner runner(model, cache, swap, comm);
  StepPlan plan;
  std::string wire;  // the plan's bytes, reused
  std::vector<float> logits;
  absl::Status local_error;  // rank 0's own failure: broadcast a shutdown, then report
  while (true) {
    if (coordinator != nullptr) {
      if (local_error.ok() && before_plan) local_error = before_plan();
      if (local_error.ok()) {
        coordinator->Plan(&plan);
      } else {
        plan.Clear();
        plan.set_shutdown(true);
      }
    }
    RETURN_IF_ERROR(BroadcastProto(comm, &plan, 0, &wire));
    if (plan.shutdown()) break;
    RETURN_IF_ERROR(runner.Run(plan, &logits));
    if (coordinator == nullptr) continue;
    if (plan.swap_in_size() > 0) coordinator->SwapInChecked(runner.swap_in_failed());
    local_error = coordinator->AfterStep(logits);
    if (after_step) after_step();
  }
  if (coordinator != nullptr && local_error.ok() &&
      coordinator->free_pages() != coordinator->total_pages()) {
    local_error =
        absl::InternalError(absl::StrCat("page leak: ", coordinator->free_pages(), " of ",
                                         coordinator->total_pages(), " pages free after the job"));
  } else if (coordinator != nullptr && local_error.ok() &&
             coordinator->free_swap_slots() != coordinator->total_swap_slots()) {
    local_error = absl::InternalError(absl::StrCat("swap slot leak: ", coordinator->free_swap_slots(),
                                                   " of ", coordinator->total_swap_slots(),
                                                   " slots free after the job"));
  }
  return AgreeOnStatus(comm, local_error);
}

}  // namespace shardlm
