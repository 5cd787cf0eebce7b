// `shardlm`: the one executable. Every subcommand runs under `mpirun -np N` or
// as a single process. Errors end every rank with one message and exit code 1.
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/malloc_tuning.h"
#include "base/status.h"
#include "base/thread_pool.h"
#include "bench/bench.h"
#include "comm/mpi_comm.h"
#include "comm/watchdog.h"
#include "coordinator/decode.h"
#include "coordinator/score.h"
#include "coordinator/tokenize.h"
#include "engine/config.h"
#include "engine/convert.h"
#include "engine/quantize.h"
#include "engine/make_model.h"
#include "engine/model.h"
#include "launch/bench_flags.h"
#include "launch/flags.h"
#include "serve/server.h"
#include "shard/shard.h"

namespace shardlm {
namespace {

constexpr char kUsage[] =
    "usage: [mpirun -np N] shardlm COMMAND [flags]\n"
    "commands:\n"
    "  decode       generate continuations of prompts (JSONL in, JSONL out)\n"
    "  score        per-token logprobs of sequences (JSONL in, JSONL out)\n"
    "  serve        an OpenAI-compatible HTTP server (completions, streaming) on rank 0\n"
    "  tokenize     text to token ids and back with a model's tokenizer\n"
    "  make-model   write a deterministic random checkpoint\n"
    "  convert      rewrite a GQA checkpoint as MLA or GLA (latent KV cache)\n"
    "  quantize     rewrite a checkpoint's linear weights as Q8_0 or Q4_0\n"
    "  inspect      print a model's parameters, shard plan and cache bytes per rank\n"
    "  bench        decode step time vs the bandwidth roofline, cache bytes and capacity per rank\n"
    "  help         this message; `shardlm COMMAND --help` for a command's flags\n";

// The job's watchdog, for commands that stop gracefully on a signal (serve).
Watchdog* g_watchdog = nullptr;

// What a command does once its flags are read: run on every rank with the job's communicator.
using Job = std::function<absl::Status(Comm&)>;

struct Command {
  const char* name;
  const char* summary;
  std::vector<FlagSpec> flags;
  // Reads every flag value the command takes into its Job, and does nothing else (no
  // collective, no file). Every rank reads the same command line, so all fail alike: Main
  // agrees on the error before the job starts and rank 0 prints it once (not as "rank 0: …";
  // a rank that fails alone, e.g. with a command line of its own in an MPI app context, is
  // named).
  absl::StatusOr<Job> (*parse)(const Flags&);
};

// --threads and --bf16-math (whose "dot" needs AVX512-BF16 on this rank's CPU).
struct ComputeOptions {
  int threads = 1;
  Bf16Math bf16_math = Bf16Math::kExact;
};

absl::StatusOr<ComputeOptions> ParseCompute(const Flags& flags) {
  ComputeOptions o;
  ASSIGN_OR_RETURN(o.threads, flags.Threads());
  ASSIGN_OR_RETURN(o.bf16_math, flags.Bf16MathMode());
  return o;
}

void SetCompute(const ComputeOptions& o) {
  SetComputeThreads(o.threads);
  SetBf16Math(o.bf16_math);
}

// The batching flags `decode`, `score` and `serve` share.
absl::Status ParseBatchOptions(const Flags& flags, BatchOptions* o) {
  ASSIGN_OR_RETURN(o->model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(o->cache.page_size, flags.Int("page-size", 16, 1, 1 << 20));
  ASSIGN_OR_RETURN(o->cache.kv_cache_mb, flags.Double("kv-cache-mb", 256, 1e-6, 1e9));
  ASSIGN_OR_RETURN(o->cache.kv_dtype, ParseKvDType(flags.String("kv-dtype", "f32")));
  ASSIGN_OR_RETURN(o->max_batch, flags.Int("max-batch", 32, 1, 1 << 16));
  ASSIGN_OR_RETURN(o->max_batch_tokens, flags.Int("max-batch-tokens", 512, 1, 1 << 20));
  ASSIGN_OR_RETURN(o->max_model_len, flags.Int("max-model-len", 0, 0, INT32_MAX));
  ASSIGN_OR_RETURN(o->prefix_cache, flags.OnOff("prefix-cache", true));
  ASSIGN_OR_RETURN(o->cache.swap_mb, flags.Double("swap-mb", 256, 0, 1e9));
  o->cache.swap_dir = flags.String("swap-dir", "");
  ASSIGN_OR_RETURN(o->cache.swap_file_mb, flags.Double("swap-file-mb", 1024, 0, 1e12));
  ASSIGN_OR_RETURN(o->cache.swap_fault, ParseSwapFault(flags.String("swap-fault", "none")));
  o->progress = flags.Bool("progress");
  return absl::OkStatus();
}

// `own` followed by the flags ParseBatchOptions, ParseCompute and ParseReplicas read (decode,
// score, serve).
std::vector<FlagSpec> WithBatchFlags(std::vector<FlagSpec> own,
                                     const char* progress_help = "print progress to stderr") {
  const FlagSpec shared[] = {
      {"page-size", true, "KV cache page size in tokens (default 16)"},
      {"kv-cache-mb", true, "KV cache per rank in MiB (default 256)"},
      {"kv-dtype", true,
       "KV cache values: f32 (default), bf16, or int8 with a scale per head and row"},
      {"max-batch", true, "sequences per step (default 32)"},
      {"max-batch-tokens", true, "tokens per step, prefill chunks included (default 512)"},
      {"max-model-len", true,
       "cap the context (prompt + generated tokens) below max_position_embeddings"},
      {"prefix-cache", true,
       "on (default) or off: sequences share the cached KV pages of a common prefix"},
      {"swap-mb", true,
       "host memory per rank for preempted sequences' KV pages (default 256; 0: recompute)"},
      {"swap-dir", true, "a directory for a swap file beyond --swap-mb (default: none)"},
      {"swap-file-mb", true, "the swap file's size per rank under --swap-dir (default 1024)"},
      {"swap-fault", true,
       "tests only: flip-memory, flip-file or truncate-file after the last rank's next swap-out"},
      {"mla-attention", true,
       "MLA models: tp (default: heads over the ranks, the latent duplicated on each) or dp "
       "(data-parallel attention: each sequence's latent on one rank, which attends for it; "
       "the MLP stays tensor-parallel; runs without prefix cache and swap)"},
      {"threads", true,
       "compute threads per rank (default 1), or auto: this host's cores / its ranks"},
      {"bf16-math", true,
       "BF16 weights: exact (default: widened to f32, the F32 model's bits) or dot (AVX512-BF16, "
       "activations rounded to bf16; ~2x the multiply rate at large batches)"},
      {"progress", false, progress_help},
      {"help", false, "this message"},
  };
  own.insert(own.end(), std::begin(shared), std::end(shared));
  return own;
}

// --tp and --mla-attention: how the job's ranks split into replicas and how each holds the
// model (coordinator/replicas.h), with the compute flags.
struct ReplicaOptions {
  int64_t tp = 0;  // ranks per replica; 0: all of the job's
  AttentionSplit split = AttentionSplit::kTensor;
  ComputeOptions compute;
};

absl::StatusOr<ReplicaOptions> ParseReplicas(const Flags& flags) {
  ReplicaOptions o;
  ASSIGN_OR_RETURN(o.tp, flags.Int("tp", 0, 1, 1 << 20));
  ASSIGN_OR_RETURN(o.split, ParseAttentionSplit(flags.String("mla-attention", "tp")));
  ASSIGN_OR_RETURN(o.compute, ParseCompute(flags));
  return o;
}

// The replicas and this rank's shard of the model in its replica.
struct ReplicatedModel {
  ReplicaSplit split;
  std::unique_ptr<Model> model;
};

absl::StatusOr<ReplicatedModel> LoadReplicated(const ReplicaOptions& o,
                                               const std::string& model_dir, Comm& comm) {
  SetCompute(o.compute);
  ReplicatedModel out;
  ASSIGN_OR_RETURN(out.split, SplitReplicas(comm, o.tp > 0 ? o.tp : comm.size()));
  const Replicas replicas = out.split.View(comm);
  auto model = Model::Load(model_dir, replicas.tp.rank(), replicas.tp.size(), o.split);
  RETURN_IF_ERROR(AgreeOnStatus(comm, model.status()));
  out.model = std::move(*model);
  return out;
}

const FlagSpec kTpFlag = {"tp", true,
                          "ranks per tensor-parallel replica (default: all); mpirun -np T·R runs "
                          "R replicas of --tp T, each request on the least-loaded"};

// A command that runs on the model as --tp and --mla-attention lay it out (decode, score,
// serve): every rank loads its shard, then `run(options, model, replicas)`.
template <typename Options, typename Run>
Job OnModel(Options options, ReplicaOptions replicas, Run run) {
  return [options = std::move(options), replicas, run](Comm& comm) -> absl::Status {
    ASSIGN_OR_RETURN(ReplicatedModel loaded,
                     LoadReplicated(replicas, options.batch.model_dir, comm));
    return run(options, *loaded.model, loaded.split.View(comm));
  };
}

// A command that rank 0 alone carries out (it writes files); the others wait for its status,
// so a following command sees the files. On success rank 0 prints `done`.
Job OnRank0(std::function<absl::Status()> work, std::string done = "") {
  return [work = std::move(work), done = std::move(done)](Comm& comm) -> absl::Status {
    RETURN_IF_ERROR(AgreeOnStatus(comm, comm.rank() == 0 ? work() : absl::OkStatus()));
    if (comm.rank() == 0 && !done.empty()) std::printf("%s\n", done.c_str());
    return absl::OkStatus();
  };
}

absl::StatusOr<Job> ParseScoreCommand(const Flags& flags) {
  ScoreOptions options;
  ASSIGN_OR_RETURN(options.input, flags.Required("input"));
  ASSIGN_OR_RETURN(options.output, flags.Required("output"));
  RETURN_IF_ERROR(ParseBatchOptions(flags, &options.batch));
  ASSIGN_OR_RETURN(ReplicaOptions replicas, ParseReplicas(flags));
  return OnModel(options, replicas, RunScore);
}

absl::StatusOr<Job> ParseDecodeCommand(const Flags& flags) {
  DecodeOptions options;
  ASSIGN_OR_RETURN(options.input, flags.Required("prompts"));
  ASSIGN_OR_RETURN(options.output, flags.Required("output"));
  RETURN_IF_ERROR(ParseBatchOptions(flags, &options.batch));
  ASSIGN_OR_RETURN(options.max_new_tokens, flags.Int("max-new-tokens", 64, 1, 1 << 30));
  ASSIGN_OR_RETURN(options.sampling.temperature, flags.Double("temperature", 0, 0, 1e4));
  ASSIGN_OR_RETURN(options.sampling.top_k, flags.Int("top-k", 0, 0, INT64_MAX));
  ASSIGN_OR_RETURN(options.sampling.top_p, flags.Double("top-p", 1, 1e-9, 1));
  ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0, 0, INT64_MAX));
  options.sampling.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(ReplicaOptions replicas, ParseReplicas(flags));
  return OnModel(options, replicas, RunDecode);
}

absl::StatusOr<Job> ParseServeCommand(const Flags& flags) {
  ServeOptions options;
  RETURN_IF_ERROR(ParseBatchOptions(flags, &options.batch));
  options.host = flags.String("host", "127.0.0.1");
  ASSIGN_OR_RETURN(int64_t port, flags.Int("port", 8000, 0, 65535));
  options.port = static_cast<int>(port);
  options.api_key = flags.String("api-key", "");
  options.served_model_name = flags.String("served-model-name", "");
  ASSIGN_OR_RETURN(options.max_waiting, flags.Int("max-waiting", 256, 1, 1 << 20));
  ASSIGN_OR_RETURN(options.max_body_bytes, flags.Int("max-body-bytes", 1 << 20, 1, 1LL << 32));
  ASSIGN_OR_RETURN(options.drain_seconds, flags.Double("drain-seconds", 30, 0, 86400));
  ASSIGN_OR_RETURN(int64_t http_threads, flags.Int("http-threads", 0, 0, 4096));
  options.http_threads = static_cast<int>(http_threads);
  ASSIGN_OR_RETURN(ReplicaOptions replicas, ParseReplicas(flags));
  return OnModel(options, replicas,
                 [](const ServeOptions& o, Model& model, const Replicas& replicas) {
                   return RunServe(o, model, replicas, g_watchdog);
                 });
}

absl::StatusOr<Job> ParseTokenizeCommand(const Flags& flags) {
  TokenizeOptions options;
  ASSIGN_OR_RETURN(options.model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(options.input, flags.Required("input"));
  ASSIGN_OR_RETURN(options.output, flags.Required("output"));
  options.add_special_tokens = flags.Bool("add-special-tokens");
  return OnRank0([options] { return RunTokenize(options); });
}

absl::StatusOr<Job> ParseBenchCommand(const Flags& flags) {
  BenchOptions options;
  RETURN_IF_ERROR(ParseBenchOptions(flags, &options));
  return Job([options](Comm& comm) { return RunBench(options, comm); });
}

absl::StatusOr<Job> ParseMakeModel(const Flags& flags) {
  MakeModelOptions options;
  ASSIGN_OR_RETURN(const std::string out, flags.Required("out"));
  ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0, 0, INT64_MAX));
  options.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(options.dtype, ParseWeightDType(flags.String("dtype", "F32")));
  ASSIGN_OR_RETURN(options.layers, flags.Int("layers", 0, 0, 1 << 16));
  ASSIGN_OR_RETURN(options.intermediate_size, flags.Int("intermediate-size", 0, 0, 1 << 24));
  ASSIGN_OR_RETURN(options.sliding_window, flags.Int("sliding-window", 0, 0, INT64_MAX));
  options.attention = flags.String("attention", "gqa");
  options.preset = flags.String("preset", "tiny");
  options.rope_interleave = flags.Bool("rope-interleave");
  options.tie_word_embeddings = flags.Bool("tie-embeddings");
  options.no_biases = flags.Bool("no-biases");
  return OnRank0([options, out] { return MakeModel(options, out); }, "wrote " + out);
}

absl::StatusOr<Job> ParseConvert(const Flags& flags) {
  ConvertOptions options;
  ASSIGN_OR_RETURN(options.model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(options.out_dir, flags.Required("out"));
  ASSIGN_OR_RETURN(options.attention, flags.Required("attention"));
  ASSIGN_OR_RETURN(options.latent_heads, flags.Int("latent-heads", 2, 1, 1 << 16));
  RETURN_IF_ERROR(flags.Required("kv-lora-rank").status());
  ASSIGN_OR_RETURN(options.kv_lora_rank, flags.Int("kv-lora-rank", 0, 1, 1 << 20));
  ASSIGN_OR_RETURN(options.rope_dim, flags.Int("rope-dim", 0, 0, 1 << 16));
  ASSIGN_OR_RETURN(options.dtype, ParseWeightDType(flags.String("dtype", "F32")));
  if (IsBlockQuantized(options.dtype)) {
    return absl::InvalidArgumentError(
        "convert: --dtype is F32, BF16 or F16; quantize the converted model with shardlm "
        "quantize");
  }
  return OnRank0([options] { return Convert(options); }, "wrote " + options.out_dir);
}

absl::StatusOr<Job> ParseQuantize(const Flags& flags) {
  QuantizeOptions options;
  ASSIGN_OR_RETURN(options.model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(options.out_dir, flags.Required("out"));
  RETURN_IF_ERROR(flags.Required("dtype").status());
  ASSIGN_OR_RETURN(options.dtype, ParseWeightDType(flags.String("dtype", "")));
  const std::string head = flags.String("head-dtype", "q8_0");
  if (head == "keep") {
    options.head_dtype = DType::kF32;
  } else {
    ASSIGN_OR_RETURN(options.head_dtype, ParseWeightDType(head));
  }
  return OnRank0([options] { return QuantizeModel(options); }, "wrote " + options.out_dir);
}

absl::Status Inspect(const std::string& model_dir, int tp, KvDType kv_dtype) {
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(model_dir));
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, model_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto dir, SafetensorsDir::Open(model_dir));
  // Everything in the checkpoint, optional norms and biases included: a Q4_0 byte holds two
  // weights, and quantization scales are not parameters.
  const int64_t params = dir->Parameters();
  int64_t file_bytes = 0;
  std::map<std::string, int> formats;  // weight dtype → tensors
  for (const std::string& name : dir->Names()) {
    ASSIGN_OR_RETURN(const DType dtype, dir->StoredDType(name));
    ASSIGN_OR_RETURN(const std::vector<int64_t> shape, dir->Shape(name));
    int64_t elements = 1;
    for (int64_t d : shape) elements *= d;
    file_bytes += elements * DTypeBytes(dtype);
    if (absl::EndsWith(name, ".weight_scale")) continue;
    const DType format = dtype == DType::kI8 ? DType::kQ8_0 : dtype == DType::kU8 ? DType::kQ4_0 : dtype;
    ++formats[DTypeName(format)];
  }
  std::printf("model        %s\n", model_dir.c_str());
  std::printf("attention    %s   layers %lld   hidden %lld   heads %lld   %s %lld\n",
              AttentionTypeName(dims.type), static_cast<long long>(dims.layers),
              static_cast<long long>(dims.hidden), static_cast<long long>(dims.num_heads),
              IsLatent(dims.type) ? "latent heads" : "kv heads",
              static_cast<long long>(dims.num_kv_heads));
  std::printf("parameters   %lld (%.1f M)\n", static_cast<long long>(params), params / 1e6);
  std::string format_list;
  for (const auto& [name, count] : formats) absl::StrAppend(&format_list, " ", name, " ×", count);
  std::printf("tensors     %s; %.1f MiB of data\n", format_list.c_str(), file_bytes / 1048576.0);
  RETURN_IF_ERROR(ValidateTensorParallel(dims, tp));
  std::printf("tensor parallel %d ranks; KV cache values %s\n", tp, KvDTypeName(kv_dtype));
  std::printf("%-5s %-10s %-10s %-5s %-12s %-12s %-16s %-14s\n", "rank", "q heads",
              IsLatent(dims.type) ? "latents" : "kv heads", "repl", "mlp cols", "vocab rows",
              "cache B/tok/layer", "cache B/token");
  for (int r = 0; r < tp; ++r) {
    ASSIGN_OR_RETURN(ShardPlan plan, PlanShard(dims, r, tp));
    // The size a real pool of one one-token page gets: the same code as decode.
    const PagedKvCache probe(dims.layers, 1, 1, CacheRowFormat(dims, plan, kv_dtype));
    const std::string q = absl::StrCat(plan.q_heads.begin, "-", plan.q_heads.end - 1);
    const std::string kv = absl::StrCat(plan.cache_heads.begin, "-", plan.cache_heads.end - 1);
    const std::string mlp = absl::StrCat(plan.mlp_cols.begin, "-", plan.mlp_cols.end - 1);
    const std::string vocab = absl::StrCat(plan.vocab_rows.begin, "-", plan.vocab_rows.end - 1);
    std::printf("%-5d %-10s %-10s %-5d %-12s %-12s %-16lld %-14lld\n", r, q.c_str(), kv.c_str(),
                plan.cache_head_replication, mlp.c_str(), vocab.c_str(),
                static_cast<long long>(probe.bytes() / dims.layers),
                static_cast<long long>(probe.bytes()));
  }
  return absl::OkStatus();
}

absl::StatusOr<Job> ParseInspect(const Flags& flags) {
  ASSIGN_OR_RETURN(const std::string model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(const int64_t tp, flags.Int("tp", 0, 1, 4096));  // 0: the job's size
  ASSIGN_OR_RETURN(const KvDType kv_dtype, ParseKvDType(flags.String("kv-dtype", "f32")));
  return Job([model_dir, tp, kv_dtype](Comm& comm) {
    const int ranks = tp > 0 ? static_cast<int>(tp) : comm.size();
    return AgreeOnStatus(
        comm, comm.rank() == 0 ? Inspect(model_dir, ranks, kv_dtype) : absl::OkStatus());
  });
}

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"score",
       "per-token logprobs of sequences",
       WithBatchFlags(
           {{"model", true, "checkpoint directory (config.json + *.safetensors)"},
            {"input", true, "JSONL requests {\"id\", \"tokens\" | \"text\"}"},
            {"output", true,
             "JSONL results {\"id\", \"logprobs\", \"sum_logprob\", \"perplexity\"}"},
            kTpFlag}),
       ParseScoreCommand},
      {"decode",
       "generate continuations of prompts (continuous batching, paged KV cache)",
       WithBatchFlags(
           {{"model", true, "checkpoint directory (config.json + *.safetensors)"},
            {"prompts", true,
             "JSONL requests {\"id\", \"prompt\" | \"tokens\", \"max_new_tokens\"?, …}"},
            {"output", true, "JSONL results, one line per request as it finishes"},
            {"max-new-tokens", true, "default for requests without max_new_tokens (default 64)"},
            {"temperature", true, "default sampling temperature (default 0: greedy)"},
            {"top-k", true, "default top-k (default 0: off)"},
            {"top-p", true, "default top-p (default 1: off)"},
            {"seed", true, "default per-request seed (default 0)"},
            kTpFlag}),
       ParseDecodeCommand},
      {"serve",
       "an OpenAI-compatible HTTP server on rank 0: POST /v1/completions and /v1/chat/completions "
       "(stream or not), GET /v1/models, /health, /metrics; requests join the running batch",
       WithBatchFlags(
           {{"model", true, "checkpoint directory with its tokenizer"},
            {"host", true, "address to listen on (default 127.0.0.1)"},
            {"port", true, "port (default 8000; 0: any free port, printed at start)"},
            {"api-key", true, "require Authorization: Bearer KEY on /v1/ (default: none)"},
            {"served-model-name", true,
             "the name clients give as \"model\" (default: the directory's)"},
            {"max-waiting", true,
             "accepted requests without a first token; beyond, 429 (default 256)"},
            {"max-body-bytes", true, "largest request body (default 1 MiB; beyond, 413)"},
            {"drain-seconds", true,
             "after SIGTERM/SIGINT: finish running requests this long, then cut them (default 30)"},
            {"http-threads", true, "HTTP worker threads (default max-waiting + max-batch + 8)"},
            kTpFlag},
           "unused (decode's flag, accepted for symmetry)"),
       ParseServeCommand},
      {"make-model",
       "write a deterministic random checkpoint",
       {{"attention", true, "mha | mqa | gqa | gta | mla | gla (default gqa)"},
        {"preset", true, "tiny | small | paper-m | paper-xl | llama-3.2-1b (default tiny)"},
        {"seed", true, "random seed (default 0)"},
        {"dtype", true, "F32 | BF16 | F16 | Q8_0 | Q4_0 (default F32; Q*: quantized as by "
                        "shardlm quantize)"},
        {"out", true, "output directory"},
        {"layers", true, "override the preset's layer count"},
        {"intermediate-size", true, "override the preset's MLP width"},
        {"sliding-window", true, "sliding window W (default none)"},
        {"rope-interleave", false, "pair RoPE channels (2k, 2k+1)"},
        {"tie-embeddings", false, "tie the LM head to the embedding"},
        {"no-biases", false, "omit the preset's optional biases"},
        {"help", false, "this message"}},
       ParseMakeModel},
      {"convert",
       "rewrite a GQA checkpoint as MLA or GLA (docs/CONVERSION.md)",
       {{"model", true, "the GQA (or MHA/MQA) checkpoint directory"},
        {"attention", true, "mla | gla"},
        {"latent-heads", true, "GLA latent heads h_c; must divide the KV groups (default 2)"},
        {"kv-lora-rank", true, "latent width d_c per latent head"},
        {"rope-dim", true, "width d_r of the shared RoPE key (default: head_dim)"},
        {"dtype", true, "F32 | BF16 | F16 for the new attention tensors (default F32; the "
                        "others keep their dtype)"},
        {"out", true, "output directory"},
        {"help", false, "this message"}},
       ParseConvert},
      {"quantize",
       "rewrite a checkpoint's linear weights as Q8_0 or Q4_0 (docs/QUANTIZATION.md)",
       {{"model", true, "the source checkpoint directory (F32, BF16 or F16 weights)"},
        {"dtype", true, "q8_0 | q4_0 for the layers' linear weights"},
        {"head-dtype", true, "q8_0 | q4_0 | keep for the embedding and LM head (default q8_0)"},
        {"out", true, "output directory"},
        {"help", false, "this message"}},
       ParseQuantize},
      {"tokenize",
       "text to token ids and back with a model's tokenizer (no weights needed)",
       {{"model", true, "model directory (config.json + tokenizer.json)"},
        {"input", true, "JSONL {\"id\", \"text\"} or {\"id\", \"tokens\"}"},
        {"output", true, "JSONL {\"id\", \"tokens\"} or {\"id\", \"text\"}"},
        {"add-special-tokens", false,
         "encode with the tokenizer's special tokens (BOS, …); decode keeps them"},
        {"help", false, "this message"}},
       ParseTokenizeCommand},
      {"inspect",
       "parameters, shard plan and cache bytes per rank",
       {{"model", true, "checkpoint directory"},
        {"tp", true, "tensor-parallel ranks to plan for (default: this job's size)"},
        {"kv-dtype", true, "cache values the bytes are counted for: f32 (default), bf16, int8"},
        {"help", false, "this message"}},
       ParseInspect},
      {"bench", "decode/prefill speed, bytes per rank vs measured bandwidth, cache capacity",
       BenchFlags(), ParseBenchCommand},
  };
  return commands;
}

int Main(int argc, char** argv) {
  TuneMalloc();
  MpiSession mpi(&argc, &argv);
  auto comm = MpiComm::World();
  const bool rank0 = comm->rank() == 0;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    if (rank0) std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const Command* command = nullptr;
  for (const Command& c : Commands()) {
    if (args[0] == c.name) command = &c;
  }
  if (command == nullptr) {
    if (rank0) std::fprintf(stderr, "shardlm: unknown command \"%s\"\n%s", args[0].c_str(), kUsage);
    return 2;
  }
  auto flags = Flags::Parse({args.begin() + 1, args.end()}, command->flags);
  if (!flags.ok() || flags->Bool("help")) {
    if (rank0) {
      if (!flags.ok())
        std::fprintf(stderr, "shardlm %s: %s\n", command->name,
                     std::string(flags.status().message()).c_str());
      std::fprintf(flags.ok() ? stdout : stderr, "usage: shardlm %s [flags]\n%s\n%s", command->name,
                   command->summary, FlagsHelp(command->flags).c_str());
    }
    return flags.ok() ? 0 : 2;
  }
  // From here a dead rank or SIGINT/SIGTERM ends the job with one message.
  auto watchdog = Watchdog::Start(*comm, absl::StrCat("shardlm ", command->name));
  g_watchdog = watchdog.get();
  absl::StatusOr<Job> job = command->parse(*flags);
  absl::Status status = AgreeOnStatus(*comm, job.status(), /*name_rank0=*/false);
  if (status.ok()) status = (*job)(*comm);
  if (status.ok()) return 0;
  if (IsAgreed(status)) {
    // Every rank holds this status: one message, every rank exits 1.
    if (rank0)
      std::fprintf(stderr, "shardlm %s: error: %s\n", command->name,
                   std::string(status.message()).c_str());
    return 1;
  }
  // Known to this rank only (e.g. a failed collective): stop the whole job now.
  std::fprintf(stderr, "shardlm %s: error on rank %d: %s\n", command->name, comm->rank(),
               std::string(status.message()).c_str());
  std::fflush(stderr);
  watchdog->Reported();  // the peers end quietly: this rank said why
  if (comm->size() > 1) MpiSession::Abort(1);
  return 1;
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) { return shardlm::Main(argc, argv); }
