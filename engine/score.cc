#include "engine/score.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>

#include "base/status.h"
#include "engine/jsonl.h"
#include "engine/sampler.h"
#include "engine/requests.h"
#include "proto/shardlm.pb.h"

namespace shardlm {
namespace {

// Runs one sequence on all ranks; rank 0 gets log p(token_t | tokens_<t), t >= 1.
class SequenceScorer {
 public:
  SequenceScorer(Model& model, Comm& comm, const ScoreOptions& options)
      : model_(model), comm_(comm), options_(options) {}

  absl::Status Score(const std::vector<int32_t>& tokens, std::vector<double>* logprobs) {
    const int64_t length = static_cast<int64_t>(tokens.size());
    const int64_t pages = (length + options_.page_size - 1) / options_.page_size;
    if (cache_ == nullptr || cache_->num_pages() < pages) {
      // Grows to the longest sequence seen; pages are 0..pages-1 in order.
      cache_ = std::make_unique<PagedKvCache>(model_.dims().layers, pages, options_.page_size,
                                              model_.plan().cache_row_floats);
      const absl::Status mapped = AgreeOnStatus(comm_, cache_->status());
      if (!mapped.ok()) {
        cache_.reset();
        return mapped;
      }
      block_table_.resize(static_cast<size_t>(pages));
      for (int64_t p = 0; p < pages; ++p) block_table_[p] = static_cast<int32_t>(p);
    }
    logprobs->clear();
    const int64_t vocab = model_.dims().vocab;
    for (int64_t begin = 0; begin < length; begin += options_.max_batch_tokens) {
      const int64_t end = std::min(length, begin + options_.max_batch_tokens);
      ForwardBatch batch;
      for (int64_t pos = begin; pos < end; ++pos) {
        batch.token_ids.push_back(tokens[pos]);
        batch.tokens.push_back({block_table_, pos});
        // The last token predicts nothing inside the sequence.
        if (pos + 1 < length) batch.logit_rows.push_back(static_cast<int32_t>(pos - begin));
      }
      RETURN_IF_ERROR(model_.Forward(batch, *cache_, comm_, &logits_));
      if (comm_.rank() != 0) continue;
      for (size_t i = 0; i < batch.logit_rows.size(); ++i) {
        const int64_t pos = begin + batch.logit_rows[i];
        logprobs->push_back(LogSoftmaxAt(logits_.data() + i * vocab, vocab, tokens[pos + 1]));
      }
    }
    return absl::OkStatus();
  }

 private:
  Model& model_;
  Comm& comm_;
  const ScoreOptions& options_;
  std::unique_ptr<PagedKvCache> cache_;
  std::vector<int32_t> block_table_;
  std::vector<float> logits_;
};

}  // namespace

absl::Status RunScore(const ScoreOptions& options, Model& model, Comm& comm) {
  if (options.max_batch_tokens < 1 || options.page_size < 1) {
    return AgreeOnStatus(comm, absl::InvalidArgumentError(
                                   "--max-batch-tokens and --page-size must be at least 1"));
  }
  // Rank 0 opens both files; every rank learns whether that worked.
  std::ifstream input;
  std::unique_ptr<JsonlWriter> writer;
  absl::Status open_status;
  if (comm.rank() == 0) open_status = OpenRequestFiles(options.input, options.output, &input, &writer);
  RETURN_IF_ERROR(AgreeOnStatus(comm, open_status));

  model.Reserve(options.max_batch_tokens);
  SequenceScorer scorer(model, comm, options);
  const ModelDims& dims = model.dims();
  std::optional<RequestReader<ScoreRequest>> reader;
  if (comm.rank() == 0) {
    reader.emplace(input, options.input, writer.get(),
                   [&dims](const JsonObject& object) { return ParseScoreRequest(object, dims); });
  }
  int64_t done = 0, scored_tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  const bool progress = options.progress || isatty(STDERR_FILENO);
  absl::Status local_error;  // rank 0's own failure (e.g. output write): stop everyone
  while (true) {
    ScoreStep step;
    JsonValue id;
    if (comm.rank() == 0) {
      step.set_shutdown(true);
      if (local_error.ok()) {
        const int64_t errors_before = reader->errors();
        absl::StatusOr<std::optional<ScoreRequest>> request = reader->Next();
        done += reader->errors() - errors_before;
        if (!request.ok()) {
          local_error = request.status();
        } else if (request->has_value()) {
          id = (*request)->id;
          step.set_shutdown(false);
          for (int32_t t : (*request)->tokens) step.add_tokens(t);
        }
      }
    }
    RETURN_IF_ERROR(BroadcastProto(comm, &step, 0));
    if (step.shutdown()) break;
    const std::vector<int32_t> tokens(step.tokens().begin(), step.tokens().end());
    std::vector<double> logprobs;
    RETURN_IF_ERROR(scorer.Score(tokens, &logprobs));
    if (comm.rank() != 0) continue;
    double sum = 0.0;
    for (double lp : logprobs) sum += lp;
    JsonLine out;
    out.Set("id", id)
        .Set("logprobs", NumberList(logprobs))
        .Set("sum_logprob", NumberValue(sum))
        .Set("perplexity", NumberValue(logprobs.empty()
                                           ? 1.0
                                           : std::exp(-sum / static_cast<double>(logprobs.size()))));
    local_error = writer->Write(out);
    ++done;
    scored_tokens += static_cast<int64_t>(tokens.size());
    if (progress) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\rscore: %lld requests, %.1f tokens/s", static_cast<long long>(done),
                   scored_tokens / std::max(seconds, 1e-9));
    }
  }
  if (progress && comm.rank() == 0) std::fprintf(stderr, "\n");
  return AgreeOnStatus(comm, local_error);
}

}  // namespace shardlm
