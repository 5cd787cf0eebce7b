#include "engine/decode.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "base/status.h"
#include "base/text.h"
#include "engine/config.h"
#include "engine/jsonl.h"
#include "engine/requests.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"

namespace shardlm {
namespace {

// Rank 0's view of the job: requests, scheduler, results file.
class Coordinator {
 public:
  Coordinator(const DecodeOptions& options, const ModelDims& dims, int64_t num_pages,
              JsonlWriter* writer)
      : options_(options), dims_(dims), writer_(writer),
        scheduler_({num_pages, options.page_size, options.max_batch, options.max_batch_tokens}),
        num_pages_(num_pages) {}

  // Reads and validates every request; invalid ones get an error line now.
  absl::Status ReadRequests(std::istream& input) {
    RequestReader<DecodeRequest> reader(
        input, options_.input, writer_,
        [this](const JsonObject& object) {
          return ParseDecodeRequest(object, dims_, options_.max_new_tokens, options_.sampling);
        },
        "error");
    while (true) {
      ASSIGN_OR_RETURN(std::optional<DecodeRequest> request, reader.Next());
      if (!request.has_value()) break;
      auto seq = std::make_unique<Sequence>();
      seq->request_index = static_cast<int64_t>(requests_.size());
      seq->tokens = request->prompt;
      seq->prompt_len = static_cast<int64_t>(request->prompt.size());
      seq->sampler = std::make_unique<Sampler>(request->sampling);
      requests_.push_back(std::move(*request));
      scheduler_.Enqueue(std::move(seq));
    }
    errors_ = reader.errors();
    return absl::OkStatus();
  }

  std::vector<ScheduledSeq> Plan(StepPlan* plan) {
    if (scheduler_.Idle()) {
      plan->Clear();
      plan->set_shutdown(true);
      return {};
    }
    auto slices = scheduler_.Schedule(plan);
    CHECK(!slices.empty());  // one sequence alone always fits (checked at start-up)
    return slices;
  }

  // After the forward pass: sample, finish sequences, write their results.
  absl::Status AfterStep(const std::vector<ScheduledSeq>& slices, const std::vector<float>& logits) {
    scheduler_.Computed(slices);
    int64_t row = 0;
    for (const ScheduledSeq& s : slices) {
      if (!s.want_logits) continue;
      Sequence* seq = s.seq;
      const DecodeRequest& request = requests_[seq->request_index];
      const Sample sample = seq->sampler->Next(logits.data() + row * dims_.vocab, dims_.vocab);
      ++row;
      seq->tokens.push_back(sample.token);
      seq->logprobs.push_back(sample.logprob);
      ++generated_tokens_;
      const char* finish = nullptr;
      if (request.stop_ids.count(sample.token)) {
        finish = "stop";
      } else if (seq->generated() >= request.max_new_tokens ||
                 static_cast<int64_t>(seq->tokens.size()) >= dims_.max_positions) {
        finish = "length";
      }
      if (finish != nullptr) RETURN_IF_ERROR(WriteResult(scheduler_.Finish(seq), finish));
    }
    return absl::OkStatus();
  }

  void Progress(bool final) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "%sdecode: %lld/%lld requests done, %lld tokens, %.1f tokens/s%s",
                 final ? "" : "\r", static_cast<long long>(done_ + errors_),
                 static_cast<long long>(requests_.size() + errors_),
                 static_cast<long long>(generated_tokens_), generated_tokens_ / std::max(seconds, 1e-9),
                 final ? "" : "   ");
  }

  void Summary() {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr,
                 "shardlm decode: %lld requests (%lld errors), %lld tokens generated in %.2f s "
                 "(%.1f tokens/s), %lld preemptions, free pages %lld/%lld\n",
                 static_cast<long long>(done_ + errors_), static_cast<long long>(errors_),
                 static_cast<long long>(generated_tokens_), seconds,
                 generated_tokens_ / std::max(seconds, 1e-9),
                 static_cast<long long>(scheduler_.total_preemptions()),
                 static_cast<long long>(scheduler_.free_pages()), static_cast<long long>(num_pages_));
  }

  int64_t free_pages() const { return scheduler_.free_pages(); }

 private:
  absl::Status WriteResult(std::unique_ptr<Sequence> seq, const char* finish) {
    const DecodeRequest& request = requests_[seq->request_index];
    const std::vector<int32_t> generated(seq->tokens.begin() + seq->prompt_len, seq->tokens.end());
    JsonLine out;
    out.Set("id", request.id)
        .Set("prompt_tokens", NumberValue(static_cast<double>(seq->prompt_len)))
        .Set("tokens", IntList(generated));
    if (dims_.byte_tokenizer) {
      out.Set("text", StringValue(ReplaceInvalidUtf8(ByteDecode(generated))));
    }
    out.Set("logprobs", NumberList(seq->logprobs)).Set("finish_reason", StringValue(finish));
    ++done_;
    return writer_->Write(out);
  }

  const DecodeOptions& options_;
  const ModelDims& dims_;
  JsonlWriter* writer_;
  Scheduler scheduler_;
  int64_t num_pages_;
  std::vector<DecodeRequest> requests_;
  int64_t done_ = 0, errors_ = 0, generated_tokens_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Every rank's side of a step: block tables, the ragged batch, the forward pass.
class StepRunner {
 public:
  StepRunner(Model& model, PagedKvCache& cache, Comm& comm)
      : model_(model), cache_(cache), comm_(comm) {}

  absl::Status Run(const StepPlan& plan, std::vector<float>* logits) {
    for (int64_t id : plan.released()) block_tables_.erase(id);
    ForwardBatch batch;
    for (const SeqStep& s : plan.seqs()) {
      std::vector<int32_t>& table = block_tables_[s.seq_id()];
      table.insert(table.end(), s.new_pages().begin(), s.new_pages().end());
    }
    for (const SeqStep& s : plan.seqs()) {
      // Block tables do not move during the step: spans into them stay valid.
      const std::vector<int32_t>& table = block_tables_[s.seq_id()];
      for (int i = 0; i < s.tokens_size(); ++i) {
        batch.token_ids.push_back(s.tokens(i));
        batch.tokens.push_back({table, s.start_pos() + i});
      }
      if (s.want_logits()) batch.logit_rows.push_back(static_cast<int32_t>(batch.tokens.size() - 1));
    }
    return model_.Forward(batch, cache_, comm_, logits);
  }

  size_t live_sequences() const { return block_tables_.size(); }

 private:
  Model& model_;
  PagedKvCache& cache_;
  Comm& comm_;
  std::map<int64_t, std::vector<int32_t>> block_tables_;
};

uint64_t ReplicatedWeightsFingerprint(const ModelWeights& w) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix_bytes = [&h](const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) {
      h ^= bytes[i];
      h *= 0x100000001b3ull;
    }
  };
  auto mix = [&](const std::vector<float>& v) { mix_bytes(v.data(), v.size() * sizeof(float)); };
  mix(w.embed_row0);
  for (const LayerWeights& l : w.layers) {
    mix(l.attn_norm);
    mix(l.mlp_norm);
  }
  mix(w.final_norm);
  return h;
}

std::string BuildId() { return absl::StrCat("shardlm protocol ", kProtocolVersion, " ", __DATE__, " ", __TIME__); }

}  // namespace

int64_t PagesForBudget(const ModelDims& dims, const ShardPlan& plan, double kv_cache_mb,
                       int64_t page_size) {
  const double page_bytes = static_cast<double>(dims.layers) * page_size *
                            static_cast<double>(plan.cache_row_floats) * sizeof(float);
  return static_cast<int64_t>(std::floor(kv_cache_mb * 1024.0 * 1024.0 / page_bytes));
}

absl::Status RunDecode(const DecodeOptions& options, Model& model, Comm& comm) {
  const ModelDims& dims = model.dims();
  // Hello: every rank checks the coordinator's protocol, config and page size.
  Hello mine;
  mine.set_protocol_version(kProtocolVersion);
  mine.set_config_fingerprint(DimsFingerprint(dims));
  mine.set_num_pages(PagesForBudget(dims, model.plan(), options.kv_cache_mb, options.page_size));
  mine.set_page_size(options.page_size);
  mine.set_build(BuildId());
  mine.set_weights_fingerprint(ReplicatedWeightsFingerprint(model.weights()));
  Hello coordinator = mine;
  RETURN_IF_ERROR(BroadcastProto(comm, &coordinator, 0));
  absl::Status hello_status;
  if (coordinator.protocol_version() != mine.protocol_version() ||
      coordinator.build() != mine.build()) {
    hello_status = absl::FailedPreconditionError(absl::StrCat(
        "binary mismatch: this rank runs \"", mine.build(), "\", rank 0 runs \"",
        coordinator.build(), "\"; run the same shardlm build on every host"));
  } else if (coordinator.config_fingerprint() != mine.config_fingerprint()) {
    hello_status = absl::FailedPreconditionError(
        "checkpoint mismatch: this rank's config.json differs from rank 0's; use the same "
        "checkpoint on every host");
  } else if (coordinator.weights_fingerprint() != mine.weights_fingerprint()) {
    hello_status = absl::FailedPreconditionError(
        "checkpoint mismatch: this rank's weights (embedding, norms) differ from rank 0's under "
        "the same config.json; use the same checkpoint on every host");
  } else if (coordinator.page_size() != mine.page_size()) {
    hello_status = absl::FailedPreconditionError("--page-size differs from rank 0's");
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm, hello_status));
  // The coordinator allocates from the smallest pool of any rank.
  std::vector<int64_t> neg_pages = {-mine.num_pages()};
  RETURN_IF_ERROR(comm.AllReduceMax(neg_pages));
  const int64_t num_pages = -neg_pages[0];

  // One request of the model's maximum length must fit.
  const int64_t max_len_pages = (dims.max_positions + options.page_size - 1) / options.page_size;
  if (num_pages < max_len_pages) {
    const double mb_needed = options.kv_cache_mb * static_cast<double>(max_len_pages) /
                             std::max<int64_t>(mine.num_pages(), 1);
    return AgreeOnStatus(comm, absl::ResourceExhaustedError(absl::StrFormat(
        "--kv-cache-mb %.1f holds %d pages of %d tokens (%d tokens) per rank, but one request "
        "of the model's maximum length (%d tokens) needs %d pages; use --kv-cache-mb %.1f or "
        "more", options.kv_cache_mb, num_pages, options.page_size, num_pages * options.page_size,
        dims.max_positions, max_len_pages, std::ceil(mb_needed * 10) / 10)));
  }
  PagedKvCache cache(dims.layers, num_pages, options.page_size, model.plan().cache_row_floats);
  RETURN_IF_ERROR(AgreeOnStatus(comm, cache.status()));
  model.Reserve(options.max_batch_tokens);

  // Rank 0 opens the files and reads the requests.
  std::unique_ptr<JsonlWriter> writer;
  std::unique_ptr<Coordinator> coordinator_state;
  absl::Status open_status;
  if (comm.rank() == 0) {
    std::ifstream input;
    open_status = OpenRequestFiles(options.input, options.output, &input, &writer);
    if (open_status.ok()) {
      coordinator_state = std::make_unique<Coordinator>(options, dims, num_pages, writer.get());
      open_status = coordinator_state->ReadRequests(input);
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm, open_status));

  const bool progress = comm.rank() == 0 && (options.progress || isatty(STDERR_FILENO));
  StepRunner runner(model, cache, comm);
  StepPlan plan;
  std::vector<float> logits;
  absl::Status local_error;  // rank 0's own failure: broadcast a shutdown, then report
  auto last_progress = std::chrono::steady_clock::now();
  while (true) {
    std::vector<ScheduledSeq> slices;
    if (comm.rank() == 0) {
      if (local_error.ok()) {
        slices = coordinator_state->Plan(&plan);
      } else {
        plan.Clear();
        plan.set_shutdown(true);
      }
    }
    RETURN_IF_ERROR(BroadcastProto(comm, &plan, 0));
    if (plan.shutdown()) break;
    RETURN_IF_ERROR(runner.Run(plan, &logits));
    if (comm.rank() != 0) continue;
    local_error = coordinator_state->AfterStep(slices, logits);
    if (progress && std::chrono::steady_clock::now() - last_progress > std::chrono::milliseconds(500)) {
      coordinator_state->Progress(false);
      last_progress = std::chrono::steady_clock::now();
    }
  }
  if (comm.rank() == 0) {
    if (progress) std::fprintf(stderr, "\n");
    coordinator_state->Summary();
    if (local_error.ok() && coordinator_state->free_pages() != num_pages) {
      local_error = absl::InternalError(absl::StrCat("page leak: ", coordinator_state->free_pages(),
                                                     " of ", num_pages, " pages free after the job"));
    }
  }
  return AgreeOnStatus(comm, local_error);
}

}  // namespace shardlm
