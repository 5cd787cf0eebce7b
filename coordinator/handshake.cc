#include "coordinator/handshake.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "base/status.h"
#include "engine/config.h"

namespace shardlm {
namespace {

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

std::string BuildId() {
  return absl::StrCat("shardlm protocol ", kProtocolVersion, " ", __DATE__, " ", __TIME__);
}

}  // namespace

KvRowFormat CacheRowFormat(const ModelDims& dims, const ShardPlan& plan, KvDType dtype) {
  const std::vector<int64_t> segments = dims.CacheRowSegments(plan.cache_heads.size());
  KvRowFormat format = KvRowFormat::Make(dtype, segments);
  CHECK_EQ(format.elems, plan.cache_row_floats);
  return format;
}

int64_t PagesForBudget(const ModelDims& dims, const ShardPlan& plan, double kv_cache_mb,
                       int64_t page_size, KvDType dtype) {
  const double page_bytes = static_cast<double>(dims.layers) * page_size *
                            static_cast<double>(CacheRowFormat(dims, plan, dtype).bytes);
  return static_cast<int64_t>(std::floor(kv_cache_mb * 1024.0 * 1024.0 / page_bytes));
}

absl::StatusOr<std::unique_ptr<PagedKvCache>> StartUp(const CacheOptions& options,
                                                      const Model& model, Comm& comm) {
  const ModelDims& dims = model.dims();
  // Hello: every rank checks the coordinator's protocol, config and page size.
  Hello mine;
  mine.set_protocol_version(kProtocolVersion);
  mine.set_config_fingerprint(DimsFingerprint(dims));
  mine.set_num_pages(PagesForBudget(dims, model.plan(), options.kv_cache_mb, options.page_size,
                                    options.kv_dtype));
  mine.set_page_size(options.page_size);
  mine.set_kv_dtype(KvDTypeName(options.kv_dtype));
  mine.set_attention_split(AttentionSplitName(model.plan().attention));
  mine.set_build(BuildId());
  mine.set_weights_fingerprint(ReplicatedWeightsFingerprint(model.weights()));
  Hello coordinator = mine;
  RETURN_IF_ERROR(BroadcastProto(comm, &coordinator, 0));
  absl::Status hello_status;
  if (coordinator.protocol_version() != mine.protocol_version() ||
      coordinator.build() != mine.build()) {
    hello_status = absl::FailedPreconditionError(
        absl::StrCat("binary mismatch: this rank runs \"", mine.build(), "\", rank 0 runs \"",
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
  } else if (coordinator.attention_split() != mine.attention_split()) {
    hello_status = absl::FailedPreconditionError(
        absl::StrCat("--mla-attention ", mine.attention_split(), " differs from rank 0's ",
                     coordinator.attention_split()));
  } else if (coordinator.kv_dtype() != mine.kv_dtype()) {
    hello_status = absl::FailedPreconditionError(absl::StrCat(
        "--kv-dtype ", mine.kv_dtype(), " differs from rank 0's ", coordinator.kv_dtype()));
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
    return AgreeOnStatus(
        comm,
        absl::ResourceExhaustedError(absl::StrFormat(
            "--kv-cache-mb %.6g holds %d pages of %d tokens (%d tokens) per rank, but one request "
            "of the model's maximum length (%d tokens) needs %d pages; use --kv-cache-mb %.6g or "
            "more, or cap the context with --max-model-len",
            options.kv_cache_mb, num_pages, options.page_size, num_pages * options.page_size,
            dims.max_positions, max_len_pages, std::ceil(mb_needed * 1000) / 1000)));
  }
  auto cache = std::make_unique<PagedKvCache>(
      dims.layers, num_pages, options.page_size,
      CacheRowFormat(dims, model.plan(), options.kv_dtype));
  RETURN_IF_ERROR(AgreeOnStatus(comm, cache->status()));
  return cache;
}

absl::StatusOr<std::unique_ptr<KvSwap>> StartSwap(const CacheOptions& options,
                                                  const PagedKvCache& cache, Comm& comm) {
  const double slot_bytes = static_cast<double>(std::max<int64_t>(KvSwap::SlotBytes(cache), 1));
  auto slots_for = [&](double mb) {
    return static_cast<int64_t>(std::floor(mb * 1024.0 * 1024.0 / slot_bytes));
  };
  std::vector<int64_t> neg_slots = {-slots_for(options.swap_mb),
                                    options.swap_dir.empty() ? 0 : -slots_for(options.swap_file_mb)};
  RETURN_IF_ERROR(comm.AllReduceMax(neg_slots));
  if (neg_slots[0] == 0 && neg_slots[1] == 0) return std::unique_ptr<KvSwap>();
  absl::StatusOr<std::unique_ptr<KvSwap>> swap =
      KvSwap::Create(cache, -neg_slots[0], -neg_slots[1], options.swap_dir);
  RETURN_IF_ERROR(AgreeOnStatus(comm, swap.status()));
  if (comm.rank() == comm.size() - 1) (*swap)->InjectFault(options.swap_fault);
  return swap;
}

}  // namespace shardlm
