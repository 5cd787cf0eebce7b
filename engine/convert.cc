#include "engine/convert.h"

#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>

#include "absl/strings/match.h"
#include "base/status.h"
#include "engine/config.h"
#include "engine/safetensors.h"

namespace shardlm {
namespace {

// Flips `v` (length n, stride `stride`) so that its largest-magnitude entry (the first, on
// ties) is positive: eigen and singular vectors are defined up to sign, and this fixes one
// the NumPy reference fixes the same way. Returns the sign applied.
double FixSign(double* v, int64_t n, int64_t stride) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (std::abs(v[i * stride]) > std::abs(v[best * stride])) best = i;
  }
  const double sign = v[best * stride] < 0 ? -1.0 : 1.0;
  for (int64_t i = 0; i < n; ++i) v[i * stride] *= sign;
  return sign;
}

// Row `r` of a row-major matrix with `cols` columns.
const double* Row(const std::vector<double>& m, int64_t r, int64_t cols) {
  return m.data() + r * cols;
}

}  // namespace

absl::Status ConvertLayer(const ConvertShape& s, const std::vector<double>& wq,
                          const std::vector<double>& wk, const std::vector<double>& wv,
                          ConvertedAttention* out) {
  const int64_t d = s.hidden, dh = s.head_dim, half = dh / 2, dr = s.rope_dim;
  const int64_t hq = s.num_heads, hkv = s.num_kv_heads, hc = s.latent_heads, rank = s.rank;
  const int64_t group = hq / hkv, stride = dh / dr;
  CHECK(wq.size() == static_cast<size_t>(hq * dh * d));
  CHECK(wk.size() == static_cast<size_t>(hkv * dh * d));
  CHECK(wv.size() == wk.size());

  // 1. RoRoPE: for each kept frequency k (target channel kk, k = stride·kk), the top
  //    eigenvector u of C = Σ over both halves of the pair of W_k,g W_k,g'ᵀ.
  std::vector<double> k_rope(dr * d, 0.0);
  std::vector<double> k_res = wk;               // [hkv·dh, d]
  std::vector<double> q_rope(hq * dr * d, 0.0);  // [hq, dr, d]
  std::vector<double> c(hkv * hkv), w(hkv);
  for (int64_t kk = 0; kk < dr / 2; ++kk) {
    const int64_t k = stride * kk;
    for (int64_t a = 0; a < hkv; ++a) {
      for (int64_t b = 0; b < hkv; ++b) {
        double sum = 0.0;
        for (int64_t part : {k, k + half}) {
          const double* x = Row(wk, a * dh + part, d);
          const double* y = Row(wk, b * dh + part, d);
          for (int64_t i = 0; i < d; ++i) sum += x[i] * y[i];
        }
        c[a * hkv + b] = sum;
      }
    }
    const lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', static_cast<lapack_int>(hkv),
                                           c.data(), static_cast<lapack_int>(hkv), w.data());
    if (info != 0) return absl::InternalError(absl::StrCat("LAPACKE_dsyevd failed: info ", info));
    // Eigenvalues ascend; the eigenvectors are the columns.
    std::vector<double> u(hkv);
    for (int64_t g = 0; g < hkv; ++g) u[g] = c[g * hkv + hkv - 1];
    FixSign(u.data(), hkv, 1);
    for (int64_t p = 0; p < 2; ++p) {
      const int64_t src = k + p * half, dst = kk + p * dr / 2;
      double* shared = k_rope.data() + dst * d;
      for (int64_t g = 0; g < hkv; ++g) {
        const double* x = Row(wk, g * dh + src, d);
        for (int64_t i = 0; i < d; ++i) shared[i] += u[g] * x[i];
      }
      // 2. What the shared key does not carry stays, unrotated, in each group's nope key.
      for (int64_t g = 0; g < hkv; ++g) {
        double* r = k_res.data() + (g * dh + src) * d;
        for (int64_t i = 0; i < d; ++i) r[i] -= u[g] * shared[i];
      }
      for (int64_t h = 0; h < hq; ++h) {
        const double* q = Row(wq, h * dh + src, d);
        double* qr = q_rope.data() + (h * dr + dst) * d;
        for (int64_t i = 0; i < d; ++i) qr[i] = u[h / group] * q[i];
      }
    }
  }

  // 3. The latent: per latent head j, M_j = [K_res of its groups; V of its groups] ≈ U S Vᵀ;
  //    kv_a rows = Vᵀ_R, the up-projection B_j = U_R S_R.
  const int64_t groups_per_latent = hkv / hc, n = groups_per_latent * dh, m = 2 * n;
  const int64_t kmin = std::min(m, d);
  CHECK(rank <= kmin);
  out->kv_a_proj.assign((hc * rank + dr) * d, 0.0);
  std::vector<std::vector<double>> ups(hc, std::vector<double>(m * rank, 0.0));
  std::vector<double> mat(m * d), sv(kmin), umat(m * kmin), vt(kmin * d), superb(kmin);
  for (int64_t j = 0; j < hc; ++j) {
    const int64_t g0 = j * groups_per_latent;
    std::copy_n(k_res.data() + g0 * dh * d, n * d, mat.data());
    std::copy_n(wv.data() + g0 * dh * d, n * d, mat.data() + n * d);
    const lapack_int info = LAPACKE_dgesdd(
        LAPACK_ROW_MAJOR, 'S', static_cast<lapack_int>(m), static_cast<lapack_int>(d), mat.data(),
        static_cast<lapack_int>(d), sv.data(), umat.data(), static_cast<lapack_int>(kmin),
        vt.data(), static_cast<lapack_int>(d));
    if (info != 0) return absl::InternalError(absl::StrCat("LAPACKE_dgesdd failed: info ", info));
    for (int64_t r = 0; r < rank; ++r) {
      const double sign = FixSign(vt.data() + r * d, d, 1);
      std::copy_n(vt.data() + r * d, d, out->kv_a_proj.data() + (j * rank + r) * d);
      for (int64_t row = 0; row < m; ++row) {
        ups[j][row * rank + r] = sign * umat[row * kmin + r] * sv[r];
      }
    }
  }
  std::copy(k_rope.begin(), k_rope.end(), out->kv_a_proj.begin() + hc * rank * d);

  // kv_b rows per query head: [W_UK (d_n = d_h rows); W_UV (d_v = d_h rows)].
  out->kv_b_proj.assign(hq * 2 * dh * rank, 0.0);
  for (int64_t h = 0; h < hq; ++h) {
    const int64_t grp = h / group, j = grp / groups_per_latent, local = grp % groups_per_latent;
    double* dst = out->kv_b_proj.data() + h * 2 * dh * rank;
    std::copy_n(ups[j].data() + local * dh * rank, dh * rank, dst);
    std::copy_n(ups[j].data() + (n + local * dh) * rank, dh * rank, dst + dh * rank);
  }
  // q_proj rows per head: [q_h (d_n = d_h rows, unchanged); q_rope_h (d_r rows)].
  out->q_proj.resize(hq * (dh + dr) * d);
  for (int64_t h = 0; h < hq; ++h) {
    double* dst = out->q_proj.data() + h * (dh + dr) * d;
    std::copy_n(wq.data() + h * dh * d, dh * d, dst);
    std::copy_n(q_rope.data() + h * dr * d, dr * d, dst + dh * d);
  }
  return absl::OkStatus();
}

namespace {

absl::Status FlagError(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("convert: ", message));
}

// The source's checks: everything the method assumes, with the reason when it does not hold.
absl::StatusOr<ConvertShape> CheckSource(const ConvertOptions& o, const ModelDims& dims,
                                         SafetensorsDir& dir) {
  if (o.attention != "mla" && o.attention != "gla") {
    return FlagError(absl::StrCat("--attention must be mla or gla, not \"", o.attention, "\""));
  }
  if (!IsGqaLike(dims.type)) {
    return FlagError(absl::StrCat(o.model_dir, " is ", AttentionTypeName(dims.type),
                                  "; the conversion starts from MHA, MQA or GQA"));
  }
  if (dims.qk_norm) {
    return FlagError("q/k norms (Qwen3) act per head between the projection and RoPE; the "
                     "conversion needs linear keys");
  }
  if (dims.rope_interleave) {
    return FlagError("the source rotates interleaved RoPE pairs; the conversion reads "
                     "half-split pairs (k, k + d_h/2) as Llama does");
  }
  if (dims.rope_scaling.type == RopeScaling::Type::kYarn) {
    return FlagError("YaRN RoPE scaling depends on the rotated width; only none, linear and "
                     "llama3 carry over to a different d_r");
  }
  if (dims.q_lora_rank != 0 || dims.head_dim % 2 != 0) {
    return FlagError("the source's query projection or head_dim is not Llama's");
  }
  ConvertShape s;
  s.hidden = dims.hidden;
  s.num_heads = dims.num_heads;
  s.num_kv_heads = dims.num_kv_heads;
  s.head_dim = dims.head_dim;
  s.latent_heads = o.attention == "mla" ? 1 : o.latent_heads;
  s.rope_dim = o.rope_dim == 0 ? dims.head_dim : o.rope_dim;
  s.rank = o.kv_lora_rank;
  if (s.latent_heads < 1 || s.num_kv_heads % s.latent_heads != 0) {
    return FlagError(absl::StrCat("--latent-heads ", s.latent_heads, " must divide the ",
                                  s.num_kv_heads, " KV groups (each latent head takes whole "
                                  "groups, so their query heads read one latent head)"));
  }
  if (s.rope_dim < 2 || s.rope_dim % 2 != 0 || s.head_dim % s.rope_dim != 0) {
    return FlagError(absl::StrCat("--rope-dim ", s.rope_dim, " must be even and divide head_dim ",
                                  s.head_dim, " (target channel k takes the source frequency "
                                  "(head_dim / rope-dim)·k)"));
  }
  const int64_t limit = std::min(2 * (s.num_kv_heads / s.latent_heads) * s.head_dim, s.hidden);
  if (s.rank < 1 || s.rank > limit) {
    return FlagError(absl::StrCat("--kv-lora-rank ", s.rank, " must be in [1, ", limit,
                                  "]: a latent head's keys and values have rank at most min(2 · ",
                                  s.num_kv_heads / s.latent_heads, " groups · ", s.head_dim,
                                  ", hidden ", s.hidden, ")"));
  }
  for (int64_t i = 0; i < dims.layers; ++i) {
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      const std::string bias = absl::StrCat("model.layers.", i, ".self_attn.", p, ".bias");
      if (dir.Has(bias)) {
        return FlagError(absl::StrCat(bias, ": attention biases are not converted (yet)"));
      }
    }
  }
  return s;
}

// A whole tensor as float64, checking its shape.
absl::StatusOr<std::vector<double>> ReadMatrix(SafetensorsDir& dir, const std::string& name,
                                               int64_t rows, int64_t cols) {
  const std::vector<int64_t> shape = {rows, cols};
  std::vector<float> f(rows * cols);
  RETURN_IF_ERROR(dir.Read(name, shape, 0, rows, 0, cols, f.data()));
  return std::vector<double>(f.begin(), f.end());
}

}  // namespace

absl::Status Convert(const ConvertOptions& o) {
  std::error_code ec;
  if (std::filesystem::exists(o.out_dir) &&
      std::filesystem::equivalent(o.model_dir, o.out_dir, ec)) {
    return FlagError("--out must not be the source directory");
  }
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(o.model_dir));
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, o.model_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto dir, SafetensorsDir::Open(o.model_dir));
  ASSIGN_OR_RETURN(ConvertShape s, CheckSource(o, dims, *dir));

  // The target config: the source's, with the latent attention's keys (native ShardLM names:
  // no DeepSeek defaults such as interleaved RoPE apply).
  ModelConfig target = config;
  target.clear_num_key_value_heads();
  target.clear_head_dim();
  target.clear_q_lora_rank();
  target.set_attention_type(o.attention);
  target.set_num_latent_heads(static_cast<int32_t>(s.latent_heads));
  target.set_kv_lora_rank(static_cast<int32_t>(s.rank));
  target.set_qk_nope_head_dim(static_cast<int32_t>(s.head_dim));
  target.set_qk_rope_head_dim(static_cast<int32_t>(s.rope_dim));
  target.set_v_head_dim(static_cast<int32_t>(s.head_dim));
  target.set_rope_interleave(false);
  target.set_softmax_scale(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  RETURN_IF_ERROR(ResolveDims(target, "the converted config").status());

  // Every tensor in name order; attention projections replaced, the rest as stored.
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  const auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape,
                       std::vector<float> v) {
    values.push_back(std::move(v));
    tensors.push_back({std::move(name), dtype, std::move(shape), {}});
  };
  std::map<std::string, ConvertedAttention> converted;
  for (int64_t i = 0; i < dims.layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".self_attn.");
    ASSIGN_OR_RETURN(auto wq, ReadMatrix(*dir, p + "q_proj.weight", s.num_heads * s.head_dim,
                                         s.hidden));
    ASSIGN_OR_RETURN(auto wk, ReadMatrix(*dir, p + "k_proj.weight",
                                         s.num_kv_heads * s.head_dim, s.hidden));
    ASSIGN_OR_RETURN(auto wv, ReadMatrix(*dir, p + "v_proj.weight",
                                         s.num_kv_heads * s.head_dim, s.hidden));
    RETURN_IF_ERROR(ConvertLayer(s, wq, wk, wv, &converted[p]));
  }
  const auto to_float = [](const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  };
  for (const std::string& name : dir->Names()) {
    if (absl::StrContains(name, ".self_attn.") && !absl::StrContains(name, ".o_proj.")) {
      // q/k/v: replaced below, once per layer (at q_proj's place in the order).
      if (!absl::EndsWith(name, ".q_proj.weight")) continue;
      const std::string p = name.substr(0, name.size() - std::string("q_proj.weight").size());
      auto it = converted.find(p);
      if (it == converted.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(o.model_dir, ": unexpected attention tensor ", name));
      }
      const ConvertedAttention& a = it->second;
      add(p + "q_proj.weight", o.dtype, {s.num_heads * (s.head_dim + s.rope_dim), s.hidden},
          to_float(a.q_proj));
      add(p + "kv_a_proj_with_mqa.weight", o.dtype,
          {s.latent_heads * s.rank + s.rope_dim, s.hidden}, to_float(a.kv_a_proj));
      add(p + "kv_b_proj.weight", o.dtype, {s.num_heads * 2 * s.head_dim, s.rank},
          to_float(a.kv_b_proj));
      continue;
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> shape, dir->Shape(name));
    ASSIGN_OR_RETURN(DType dtype, dir->StoredDType(name));
    int64_t rows = shape.empty() ? 1 : shape[0], cols = 1;
    for (size_t k = 1; k < shape.size(); ++k) cols *= shape[k];
    if (shape.size() == 1) std::swap(rows, cols);  // 1-D tensors read as [1, n]
    std::vector<float> v(rows * cols);
    RETURN_IF_ERROR(dir->Read(name, shape, 0, rows, 0, cols, v.data()));
    add(name, dtype, shape, std::move(v));
  }
  for (size_t k = 0; k < tensors.size(); ++k) tensors[k].values = values[k];

  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", o.out_dir, ": ", ec.message()));
  RETURN_IF_ERROR(WriteSafetensors(o.out_dir + "/model.safetensors", tensors));
  {
    std::ofstream out(o.out_dir + "/config.json", std::ios::trunc);
    out << ModelConfigToJson(target) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", o.out_dir, "/config.json"));
  }
  return CopyTokenizerFiles(o.model_dir, o.out_dir);
}

}  // namespace shardlm
