#include "engine/quantize.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "kernels/quant.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

absl::Status FlagError(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("quantize: ", message));
}

// config.json with a "quantization_config" that says what was done (the loader goes by the
// tensors' dtypes; this is for people and tools reading the directory).
absl::Status WriteConfig(const QuantizeOptions& o, int64_t quantized, int64_t kept) {
  const std::string src = o.model_dir + "/config.json";
  std::ifstream in(src);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(text.str(), nullptr, false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(src, " is not a JSON object"));
  }
  const auto lower = [](DType d) { return absl::AsciiStrToLower(DTypeName(d)); };
  config["quantization_config"] = {
      {"quant_method", "shardlm"},
      {"format", lower(o.dtype)},
      {"head_format", o.head_dtype == DType::kF32 ? "as stored" : lower(o.head_dtype)},
      {"group_size", kQuantBlock},
      {"quantized_tensors", quantized},
      {"unquantized_linear_tensors", kept},
  };
  const std::string path = o.out_dir + "/config.json";
  std::ofstream out(path, std::ios::trunc);
  out << config.dump(2) << "\n";
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

absl::Status QuantizeModel(const QuantizeOptions& o) {
  if (!IsBlockQuantized(o.dtype)) {
    return FlagError(absl::StrCat("--dtype must be q8_0 or q4_0, not ", DTypeName(o.dtype)));
  }
  if (!IsBlockQuantized(o.head_dtype) && o.head_dtype != DType::kF32) {
    return FlagError("--head-dtype must be q8_0, q4_0 or keep");
  }
  std::error_code ec;
  if (std::filesystem::exists(o.out_dir) &&
      std::filesystem::equivalent(o.model_dir, o.out_dir, ec)) {
    return FlagError("--out must not be the source directory");
  }
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(o.model_dir));
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, o.model_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto dir, SafetensorsDir::Open(o.model_dir));

  // What each linear weight becomes.
  std::map<std::string, DType> targets;
  for (const TensorSpec& spec : CheckpointTensors(dims)) {
    const bool head = spec.name == "lm_head" || spec.name == "model.embed_tokens.weight";
    if (!spec.is_linear && !head) continue;
    if (absl::EndsWith(spec.name, "kv_b_proj")) continue;
    const std::string name = spec.is_linear ? spec.name + ".weight" : spec.name;
    const DType dtype = head ? o.head_dtype : o.dtype;
    if (IsBlockQuantized(dtype)) targets[name] = dtype;
  }

  // Every written tensor's bytes, one buffer per tensor in `tensors`' order.
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<TensorToWrite> tensors;
  int64_t quantized = 0, kept = 0;
  for (const std::string& name : dir->Names()) {
    ASSIGN_OR_RETURN(std::vector<int64_t> shape, dir->Shape(name));
    ASSIGN_OR_RETURN(DType stored, dir->StoredDType(name));
    if (stored == DType::kI8 || stored == DType::kU8) {
      return FlagError(absl::StrCat(o.model_dir, " is already quantized (", name, " is ",
                                    DTypeName(stored), "); quantize its unquantized source"));
    }
    int64_t rows = shape.empty() ? 1 : shape[0], cols = 1;
    for (size_t k = 1; k < shape.size(); ++k) cols *= shape[k];
    if (shape.size() == 1) std::swap(rows, cols);  // 1-D tensors read as [1, n]
    const auto target = targets.find(name);
    if (target != targets.end() && shape.size() == 2 && cols % kQuantBlock == 0) {
      const DType format = target->second;
      std::vector<float> row(static_cast<size_t>(cols));
      const int64_t qb = QuantBytes(format, cols);
      std::vector<uint8_t> quants(static_cast<size_t>(rows * qb));
      std::vector<uint16_t> scales(static_cast<size_t>(rows * (cols / kQuantBlock)));
      for (int64_t r = 0; r < rows; ++r) {
        RETURN_IF_ERROR(dir->Read(name, shape, r, r + 1, 0, cols, row.data()));
        for (float v : row) {
          if (!std::isfinite(v)) {
            return absl::InvalidArgumentError(
                absl::StrCat(name, " row ", r, " has a non-finite value"));
          }
        }
        QuantizeRow(format, row.data(), cols, quants.data() + r * qb,
                    scales.data() + r * (cols / kQuantBlock));
      }
      bytes.push_back(std::move(quants));
      const std::vector<int64_t> quant_shape = {rows, qb};
      tensors.emplace_back(name, format == DType::kQ8_0 ? DType::kI8 : DType::kU8, quant_shape,
                           std::span<const float>{}, bytes.back());
      bytes.emplace_back(reinterpret_cast<const uint8_t*>(scales.data()),
                         reinterpret_cast<const uint8_t*>(scales.data() + scales.size()));
      const std::string scale_name =
          absl::StrCat(name.substr(0, name.size() - std::string("weight").size()), "weight_scale");
      tensors.emplace_back(scale_name, DType::kF16, std::vector<int64_t>{rows, cols / kQuantBlock},
                           std::span<const float>{}, bytes.back());
      ++quantized;
      continue;
    }
    if (target != targets.end()) ++kept;  // a linear weight whose rows are not whole blocks
    std::vector<uint8_t> raw(static_cast<size_t>(rows * cols * DTypeBytes(stored)));
    RETURN_IF_ERROR(dir->ReadStored(name, shape, 0, rows, 0, cols, raw.data()));
    bytes.push_back(std::move(raw));
    tensors.emplace_back(name, stored, shape, std::span<const float>{}, bytes.back());
  }
  // `bytes` reallocated while growing: point the spans at the final buffers.
  for (size_t k = 0, b = 0; k < tensors.size(); ++k, ++b) tensors[k].raw = bytes[b];
  if (tensors.empty() || quantized == 0) {
    return FlagError(absl::StrCat(o.model_dir, " has no linear weight with rows of whole 32-blocks"));
  }

  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", o.out_dir, ": ", ec.message()));
  RETURN_IF_ERROR(WriteSafetensors(o.out_dir + "/model.safetensors", tensors));
  RETURN_IF_ERROR(WriteConfig(o, quantized, kept));
  return CopyTokenizerFiles(o.model_dir, o.out_dir);
}

}  // namespace shardlm
