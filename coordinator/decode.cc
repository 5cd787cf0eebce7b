#include "coordinator/decode.h"

#include <unistd.h>

#include <chrono>
#include <fstream>

#include "absl/strings/str_join.h"
#include "base/status.h"
#include "base/text.h"
#include "coordinator/coordinator.h"
#include "coordinator/requests.h"
#include "coordinator/token_codec.h"
#include "engine/jsonl.h"

namespace shardlm {

SchedulerOptions SchedulerOptionsFor(const BatchOptions& options, const Model& model,
                                     const PagedKvCache& cache, const KvSwap* swap) {
  const int64_t groups = model.plan().data_parallel_attention() ? model.plan().size : 1;
  return {cache.num_pages() * groups,
          options.cache.page_size,
          options.max_batch,
          options.max_batch_tokens,
          options.prefix_cache && groups == 1,
          swap && groups == 1 ? swap->slots() : 0,
          groups};
}

absl::Status RunJsonlJob(const char* job, const BatchOptions& options, const std::string& input,
                         const std::string& output, Model& model, const Replicas& replicas,
                         const JsonlClient& client) {
  Comm& world = replicas.world;
  if (options.max_model_len > 0) model.CapContext(options.max_model_len);
  // The Hello and the page and slot counts are agreed by every rank of every replica.
  ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache, StartUp(options.cache, model, world));
  ASSIGN_OR_RETURN(std::unique_ptr<KvSwap> swap, StartSwap(options.cache, *cache, world));
  model.Reserve(options.max_batch_tokens);

  // Every replica's leader runs a coordinator (with the tokenizer, for text and stop strings);
  // rank 0 also opens the files, reads and validates every request (bad ones get an error
  // line now) and hands the rest to the replicas.
  std::unique_ptr<JsonlWriter> writer;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<ReplicaRouter> router;
  int64_t errors = 0, done = 0;
  absl::Status open_status;
  if (replicas.leader()) {
    std::ifstream in;
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded =
        LoadModelTokenizer(options.model_dir, model.dims());
    open_status = loaded.status();
    if (open_status.ok()) {
      tokenizer = std::move(*loaded);
      if (replicas.client()) open_status = OpenRequestFiles(input, output, &in, &writer);
    }
    if (open_status.ok() && replicas.client()) {
      router = std::make_unique<ReplicaRouter>(
          replicas.leaders, replicas.count, [&](SequenceResult result) -> absl::Status {
            ++done;
            return writer->Write(client.result_line(result));
          });
      coordinator = std::make_unique<Coordinator>(
          SchedulerOptionsFor(options, model, *cache, swap.get()), model.dims(),
          router->LocalSink(), tokenizer.get());
      router->SetLocal(coordinator.get());
      absl::StatusOr<int64_t> read = client.read(
          in, writer.get(),
          [&](int64_t handle, SequenceRequest request) {
            return router->Submit(handle, std::move(request));
          },
          tokenizer.get());
      open_status = read.status();
      if (read.ok()) errors = *read;
      if (open_status.ok()) open_status = router->EndSubmissions();
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(world, open_status));
  if (replicas.leader() && !replicas.client()) {
    return RunReplicaLeader(model, *cache, swap.get(), replicas,
                            SchedulerOptionsFor(options, model, *cache, swap.get()),
                            tokenizer.get(), /*stream=*/false);
  }

  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const bool progress = world.rank() == 0 && (options.progress || isatty(STDERR_FILENO));
  auto last_progress = start;
  auto tokens = [&] {
    return client.count_generated ? router->generated_tokens() : router->computed_tokens();
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
  std::function<absl::Status()> before_plan;
  if (router) before_plan = [&] { return router->BeforePlan(); };
  const absl::Status status = RunSteps(model, *cache, swap.get(), replicas.tp, coordinator.get(),
                                       print_progress, before_plan);
  if (!replicas.client()) return status;
  if (progress) std::fprintf(stderr, "\n");
  if (!status.ok()) return status;
  // The summary of a job that ran to its end; an error is the job's one message instead.
  ASSIGN_OR_RETURN(const ReplicaCounters all, router->Finish());
  const int64_t counted_tokens =
      client.count_generated ? all.generated_tokens() : all.computed_tokens();
  std::fprintf(stderr,
               "shardlm %s: %lld requests (%lld errors), %lld tokens %s in %.2f s "
               "(%.1f tokens/s), %lld preemptions (%lld swapped out, %lld swap-ins refused), "
               "%lld tokens recomputed, prefix cache %lld of %lld prompt tokens, "
               "free pages %lld/%lld%s\n",
               job, static_cast<long long>(done + errors), static_cast<long long>(errors),
               static_cast<long long>(counted_tokens), counted, seconds(),
               counted_tokens / std::max(seconds(), 1e-9),
               static_cast<long long>(all.preemptions()),
               static_cast<long long>(all.swapped_out()),
               static_cast<long long>(all.swap_in_failures()),
               static_cast<long long>(all.recomputed_tokens()),
               static_cast<long long>(all.prefix_hit_tokens()),
               static_cast<long long>(all.prefix_hit_tokens() + all.prefix_miss_tokens()),
               static_cast<long long>(all.free_pages()), static_cast<long long>(all.total_pages()),
               replicas.count > 1
                   ? absl::StrCat(", ", replicas.count, " replicas of ", replicas.tp.size(),
                                  " ranks (requests ", absl::StrJoin(router->assigned(), "/"), ")")
                         .c_str()
                   : "");
  return status;
}

absl::Status RunDecode(const DecodeOptions& options, Model& model, const Replicas& replicas) {
  const ModelDims& dims = model.dims();
  std::vector<JsonValue> ids;  // by handle
  JsonlClient client;
  client.read = [&](std::istream& in, JsonlWriter* writer, const JsonlClient::Submit& submit,
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
      RETURN_IF_ERROR(submit(static_cast<int64_t>(ids.size()), std::move(sequence)));
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
  return RunJsonlJob("decode", options.batch, options.input, options.output, model, replicas,
                     client);
}

}  // namespace shardlm
