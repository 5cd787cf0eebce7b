// `shardlm quantize`: a checkpoint's linear weights rewritten as Q8_0 or Q4_0 (kernels/quant.h,
// docs/QUANTIZATION.md). Each quantized `<name>.weight` becomes I8 or U8 quants plus an F16
// `<name>.weight_scale`; every other tensor is copied with its stored dtype and bits.
#ifndef SHARDLM_ENGINE_QUANTIZE_H_
#define SHARDLM_ENGINE_QUANTIZE_H_

#include <string>

#include "absl/status/status.h"
#include "base/dtype.h"

namespace shardlm {

struct QuantizeOptions {
  std::string model_dir;  // the source (config.json + *.safetensors), not already quantized
  std::string out_dir;    // written: config.json, model.safetensors, tokenizer files
  DType dtype = DType::kQ8_0;  // the layers' linear weights: kQ8_0 or kQ4_0
  // The embedding table and LM head (tied or not): kQ8_0 or kQ4_0, or kF32 to keep them as
  // stored. Like llama.cpp, which keeps the output layer above 4 bits, the default is Q8_0.
  DType head_dtype = DType::kQ8_0;
};

// Quantizes what can be quantized: 2-D linear weights whose rows are whole 32-blocks, except
// MLA/GLA's kv_b_proj (its W_UK is read transposed). Errors name the file, tensor or flag.
absl::Status QuantizeModel(const QuantizeOptions& options);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_QUANTIZE_H_
