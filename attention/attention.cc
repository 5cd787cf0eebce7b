#include "attention/attention.h"

#include "attention/gqa.h"
#include "attention/gta.h"
#include "attention/latent.h"
#include "base/status.h"

namespace shardlm {

int64_t AttentionWeights::bytes() const {
  int64_t total = 0;
  for (const Linear* w : Linears()) total += w->bytes();
  return total;
}

const AttentionFamily& AttentionFamily::Of(AttentionType type) {
  switch (type) {
    case AttentionType::kMha:
    case AttentionType::kMqa:
    case AttentionType::kGqa:
      return GqaFamily();
    case AttentionType::kGta:
      return GtaFamily();
    case AttentionType::kMla:
    case AttentionType::kGla:
      return LatentFamily();
  }
  CHECK_MSG(false, "unknown attention type ", static_cast<int>(type));
  return GqaFamily();
}

}  // namespace shardlm
