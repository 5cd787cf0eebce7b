#include "coordinator/score.h"

#include <cmath>

#include "base/status.h"
#include "coordinator/requests.h"

namespace shardlm {

absl::Status RunScore(const ScoreOptions& options, Model& model, const Replicas& replicas) {
  const ModelDims& dims = model.dims();
  std::vector<JsonValue> ids;  // by handle
  JsonlClient client;
  client.read = [&](std::istream& in, JsonlWriter* writer, const JsonlClient::Submit& submit,
                    const Tokenizer* tokenizer) -> absl::StatusOr<int64_t> {
    RequestReader<ScoreRequest> reader(in, options.input, writer,
                                       [&dims, tokenizer](const JsonObject& object) {
                                         return ParseScoreRequest(object, dims, tokenizer);
                                       });
    while (true) {
      ASSIGN_OR_RETURN(std::optional<ScoreRequest> request, reader.Next());
      if (!request.has_value()) break;
      SequenceRequest sequence;
      sequence.prompt = std::move(request->tokens);
      sequence.max_new_tokens = 0;  // prefill only
      sequence.prompt_logprobs = true;
      RETURN_IF_ERROR(submit(static_cast<int64_t>(ids.size()), std::move(sequence)));
      ids.push_back(std::move(request->id));
    }
    return reader.errors();
  };
  client.result_line = [&](const SequenceResult& result) {
    const std::vector<double>& logprobs = result.prompt_logprobs;
    double sum = 0.0;
    for (double lp : logprobs) sum += lp;
    JsonLine out;
    out.Set("id", ids[result.handle])
        .Set("logprobs", NumberList(logprobs))
        .Set("sum_logprob", NumberValue(sum))
        .Set("perplexity",
             NumberValue(logprobs.empty() ? 1.0
                                          : std::exp(-sum / static_cast<double>(logprobs.size()))));
    return out;
  };
  client.count_generated = false;
  return RunJsonlJob("score", options.batch, options.input, options.output, model, replicas,
                     client);
}

}  // namespace shardlm
