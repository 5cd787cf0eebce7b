#include "coordinator/decode.h"

#include <unistd.h>

#include <chrono>
#include <fstream>

#include "base/status.h"
#include "base/text.h"
#include "coordinator/coordinator.h"
#include "coordinator/requests.h"
#include "coordinator/token_codec.h"
#include "engine/jsonl.h"

namespace shardlm {

absl::Status RunJsonlJob(const char* job, const BatchOptions& options, const std::string& input,
                         const std::string& output, Model& model, Comm& comm,
                         const JsonlClient& client) {
  if (options.max_model_len > 0) model.CapContext(options.max_model_len);
  ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache, StartUp(options.cache, model, comm));
  ASSIGN_OR_RETURN(std::unique_ptr<KvSwap> swap, StartSwap(options.cache, *cache, comm));
  model.Reserve(options.max_batch_tokens);

  // Rank 0 opens the files, reads and validates every request (bad ones get an error line
  // now) and queues the rest.
  std::unique_ptr<JsonlWriter> writer;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Coordinator> coordinator;
  int64_t errors = 0, done = 0;
  absl::Status open_status;
  if (comm.rank() == 0) {
    std::ifstream in;
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded =
        LoadModelTokenizer(options.model_dir, model.dims());
    open_status = loaded.status();
    if (open_status.ok()) {
      tokenizer = std::move(*loaded);
      open_status = OpenRequestFiles(input, output, &in, &writer);
    }
    if (open_status.ok()) {
      const SchedulerOptions scheduler{cache->num_pages(), options.cache.page_size,
                                       options.max_batch, options.max_batch_tokens,
                                       options.prefix_cache, swap ? swap->slots() : 0};
      coordinator = std::make_unique<Coordinator>(
          scheduler, model.dims(),
          [&](SequenceResult result) -> absl::Status {
            ++done;
            return writer->Write(client.result_line(result));
          },
          tokenizer.get());
      absl::StatusOr<int64_t> read =
          client.read(in, writer.get(), coordinator.get(), tokenizer.get());
      open_status = read.status();
      if (read.ok()) errors = *read;
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm, open_status));

  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const bool progress = comm.rank() == 0 && (options.progress || isatty(STDERR_FILENO));
  auto last_progress = start;
  auto tokens = [&] {
    return client.count_generated ? coordinator->generated_tokens()
                                  : coordinator->computed_tokens();
  };
  const char* counted = client.count_generated ? "generated" : "scored";
  auto print_progress = [&] {
    if (!progress ||
        std::chrono::steady_clock::now() - last_progress < std::chrono::milliseconds(500)) {
      return;
    }
    last_progress = std::chrono::steady_clock::now();
    std::fprintf(stderr, "\r%s: %lld requests done, %lld tokens %s, %.1f tokens/s   ", job,
                 static_cast<long long>(done + errors), static_cast<long long>(tokens()), counted,
                 tokens() / std::max(seconds(), 1e-9));
  };
  const absl::Status status = RunSteps(model, *cache, swap.get(), comm, coordinator.get(), print_progress);
  if (comm.rank() == 0) {
    if (progress) std::fprintf(stderr, "\n");
  }
  // The summary of a job that ran to its end; an error is the job's one message instead.
  if (comm.rank() == 0 && status.ok()) {
    std::fprintf(stderr,
                 "shardlm %s: %lld requests (%lld errors), %lld tokens %s in %.2f s "
                 "(%.1f tokens/s), %lld preemptions (%lld swapped out, %lld swap-ins refused), "
                 "%lld tokens recomputed, prefix cache %lld of %lld prompt tokens, "
                 "free pages %lld/%lld\n",
                 job, static_cast<long long>(done + errors), static_cast<long long>(errors),
                 static_cast<long long>(tokens()), counted, seconds(),
                 tokens() / std::max(seconds(), 1e-9),
                 static_cast<long long>(coordinator->total_preemptions()),
                 static_cast<long long>(coordinator->swapped_out()),
                 static_cast<long long>(coordinator->swap_in_failures()),
                 static_cast<long long>(coordinator->recomputed_tokens()),
                 static_cast<long long>(coordinator->prefix_hit_tokens()),
                 static_cast<long long>(coordinator->prefix_hit_tokens() +
                                        coordinator->prefix_miss_tokens()),
                 static_cast<long long>(coordinator->free_pages()),
                 static_cast<long long>(coordinator->total_pages()));
  }
  return status;
}

absl::Status RunDecode(const DecodeOptions& options, Model& model, Comm& comm) {
  const ModelDims& dims = model.dims();
  std::vector<JsonValue> ids;  // by handle
  JsonlClient client;
  client.read = [&](std::istream& in, JsonlWriter* writer, Coordinator* coordinator,
                    const Tokenizer* tokenizer) -> absl::StatusOr<int64_t> {
    RequestReader<DecodeRequest> reader(
        in, options.input, writer,
        [&](const JsonObject& object) {
          return ParseDecodeRequest(object, dims, options.max_new_tokens, options.sampling,
                                    tokenizer);
        },
        "error");
    while (true) {
      ASSIGN_OR_RETURN(std::optional<DecodeRequest> request, reader.Next());
      if (!request.has_value()) break;
      SequenceRequest sequence;
      sequence.prompt = std::move(request->prompt);
      sequence.max_new_tokens = request->max_new_tokens;
      sequence.sampling = request->sampling;
      sequence.stop_ids = std::move(request->stop_ids);
      sequence.stop = std::move(request->stop);
      coordinator->Submit(static_cast<int64_t>(ids.size()), std::move(sequence));
      ids.push_back(std::move(request->id));
    }
    return reader.errors();
  };
  client.result_line = [&](const SequenceResult& result) {
    JsonLine out;
    out.Set("id", ids[result.handle])
        .Set("prompt_tokens", NumberValue(static_cast<double>(result.prompt_len)))
        .Set("tokens", IntList(result.generated));
    if (result.has_text) out.Set("text", StringValue(result.text));
    out.Set("logprobs", NumberList(result.logprobs))
        .Set("finish_reason", StringValue(result.finish_reason));
    return out;
  };
  return RunJsonlJob("decode", options.batch, options.input, options.output, model, comm, client);
}

}  // namespace shardlm
