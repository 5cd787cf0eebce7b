#include "coordinator/tokenize.h"

#include <fstream>

#include "base/status.h"
#include "base/text.h"
#include "coordinator/requests.h"
#include "coordinator/token_codec.h"
#include "engine/config.h"
#include "engine/jsonl.h"

namespace shardlm {

absl::Status RunTokenize(const TokenizeOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(options.model_dir));
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, options.model_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   LoadModelTokenizer(options.model_dir, dims));
  if (tokenizer == nullptr) {
    return absl::NotFoundError(absl::StrCat(options.model_dir,
                                            " has no tokenizer.json (and its config.json does not "
                                            "name the byte tokenizer)"));
  }
  std::ifstream in;
  std::unique_ptr<JsonlWriter> writer;
  RETURN_IF_ERROR(OpenRequestFiles(options.input, options.output, &in, &writer));
  struct Line {
    JsonValue id;
    JsonLine out;
  };
  RequestReader<Line> reader(
      in, options.input, writer.get(), [&](const JsonObject& object) -> absl::StatusOr<Line> {
        RETURN_IF_ERROR(CheckKnownFields(object, {"id", "text", "tokens"}));
        const JsonValue* id = FindField(object, "id");
        if (id == nullptr) return absl::InvalidArgumentError("missing \"id\"");
        Line line;
        ASSIGN_OR_RETURN(line.id, GetId(*id));
        const JsonValue* text = FindField(object, "text");
        const JsonValue* tokens = FindField(object, "tokens");
        if ((text != nullptr) == (tokens != nullptr)) {
          return absl::InvalidArgumentError("give exactly one of \"text\" and \"tokens\"");
        }
        line.out.Set("id", line.id);
        if (text != nullptr) {
          ASSIGN_OR_RETURN(std::string s, GetString(*text, "text"));
          line.out.Set("tokens", IntList(tokenizer->Encode(s, options.add_special_tokens)));
        } else {
          ASSIGN_OR_RETURN(std::vector<int64_t> ids, GetIntList(*tokens, "tokens"));
          std::vector<int32_t> ids32;
          for (const int64_t t : ids) {
            if (t < 0 || t >= tokenizer->vocab_size()) {
              return absl::InvalidArgumentError(
                  absl::StrCat("token id ", t, " is outside the tokenizer's vocabulary [0, ",
                               tokenizer->vocab_size(), ")"));
            }
            ids32.push_back(static_cast<int32_t>(t));
          }
          line.out.Set("text", StringValue(ReplaceInvalidUtf8(
                                   tokenizer->Decode(ids32, !options.add_special_tokens))));
        }
        return line;
      });
  while (true) {
    ASSIGN_OR_RETURN(std::optional<Line> line, reader.Next());
    if (!line.has_value()) break;
    RETURN_IF_ERROR(writer->Write(line->out));
  }
  return absl::OkStatus();
}

}  // namespace shardlm
