#include "coordinator/sampler.h"

#include <algorithm>
#include <cmath>

#include "base/status.h"

namespace shardlm {

double LogSoftmaxAt(const float* logits, int64_t vocab, int64_t target) {
  float max_logit = logits[0];
  for (int64_t v = 1; v < vocab; ++v) max_logit = std::max(max_logit, logits[v]);
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - max_logit);
  return static_cast<double>(logits[target]) - max_logit - std::log(sum);
}

int32_t ArgMax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v) {
    if (logits[v] > logits[best]) best = v;
  }
  return static_cast<int32_t>(best);
}

Sample Sampler::Next(const float* logits, int64_t vocab) {
  CHECK_GT(vocab, 0);
  Sample out;
  if (params_.temperature <= 0.0 || params_.top_k == 1) {
    out.token = ArgMax(logits, vocab);
    out.logprob = LogSoftmaxAt(logits, vocab, out.token);
    return out;
  }
  // Candidates sorted by logit, descending (ties: lower id first), cut to top-k.
  candidates_.resize(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) candidates_[v] = {logits[v], static_cast<int32_t>(v)};
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(), by_logit);
  candidates_.resize(static_cast<size_t>(k));
  // Tempered probabilities of the candidates.
  const double max_scaled = candidates_[0].first / params_.temperature;
  std::vector<double>& probs = probs_;
  probs.resize(candidates_.size());
  double total = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    probs[i] = std::exp(candidates_[i].first / params_.temperature - max_scaled);
    total += probs[i];
  }
  // Nucleus: the smallest prefix whose mass reaches top_p.
  size_t keep = candidates_.size();
  if (params_.top_p < 1.0) {
    double mass = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      mass += probs[i] / total;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 0.0;
  for (size_t i = 0; i < keep; ++i) kept_total += probs[i];
  const double u = static_cast<double>(rng_.Uniform()) * kept_total;
  double acc = 0.0;
  size_t pick = keep - 1;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) {
      pick = i;
      break;
    }
  }
  out.token = candidates_[pick].second;
  out.logprob = LogSoftmaxAt(logits, vocab, out.token);
  return out;
}

}  // namespace shardlm
