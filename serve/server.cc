#include "serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "coordinator/handshake.h"
#include "coordinator/replicas.h"
#include "coordinator/token_codec.h"
#include "serve/openai_api.h"

namespace shardlm {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A Prometheus histogram (cumulative buckets, seconds); thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void Observe(double v) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t b = 0;
    while (b < bounds_.size() && v > bounds_[b]) ++b;
    ++counts_[b];
    sum_ += v;
    ++count_;
  }
  void Write(std::string* out, const char* name, const char* help) const {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
    int64_t cumulative = 0;
    for (size_t b = 0; b < bounds_.size(); ++b) {
      cumulative += counts_[b];
      absl::StrAppend(out, name, "_bucket{le=\"", bounds_[b], "\"} ", cumulative, "\n");
    }
    absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", count_, "\n", name, "_sum ",
                    absl::StrFormat("%.6f", sum_), "\n", name, "_count ", count_, "\n");
  }

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;
  double sum_ = 0.0;
  int64_t count_ = 0;
};

// One request between its HTTP thread and the step loop.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  bool streaming = false;
  std::vector<StreamedToken> tokens;  // sampled, not yet sent (streaming only)
  std::optional<SequenceResult> result;
  bool failed = false;  // the server stopped before the result
  // The step loop's own (no lock): for the latency histograms.
  Clock::time_point arrival, last_token;
  bool first_token = true;
};

// Rank 0's HTTP front end and its side of the step loop.
class FrontEnd {
 public:
  FrontEnd(const ServeOptions& options, const ModelDims& dims, const Tokenizer& tokenizer,
           ModelChatTemplate chat, int64_t total_pages, int ranks)
      : options_(options), dims_(dims), tokenizer_(tokenizer), chat_(std::move(chat)),
        total_pages_(total_pages),
        ranks_(ranks), created_(static_cast<int64_t>(std::time(nullptr))) {
    free_pages_ = total_pages;
    served_model_ = options.served_model_name;
    if (served_model_.empty()) {
      served_model_ =
          std::filesystem::path(options.batch.model_dir).lexically_normal().filename().string();
      if (served_model_.empty()) {
        served_model_ = std::filesystem::path(options.batch.model_dir)
                            .lexically_normal()
                            .parent_path()
                            .filename()
                            .string();
      }
    }
    limits_.dims = &dims_;
    limits_.served_model = served_model_;
    limits_.chat_template = chat_.chat_template.get();
    limits_.bos_token = chat_.bos_token;
    limits_.eos_token = chat_.eos_token;
    limits_.encode_raw = [this](const std::string& text) {
      std::lock_guard<std::mutex> lock(tokenizer_mu_);
      return tokenizer_.Encode(text, /*add_special_tokens=*/false);
    };
  }

  // Binds the port and starts serving on a thread of its own.
  absl::Status Listen();
  // The first stop signal: stop accepting, let the step loop drain (watchdog thread).
  void RequestStop(int sig);
  // After the step loop: fail what is still open, let the open streams write their last
  // events, stop the HTTP server, join.
  void Shutdown();

  // The step loop's side: between steps (may wait for work), per token, per result.
  absl::Status BeforePlan(ReplicaRouter& router);
  void OnToken(int64_t handle, int32_t token, double logprob, std::string_view text);
  absl::Status OnResult(SequenceResult result);

 private:
  void Routes();
  void Completions(const httplib::Request& req, httplib::Response& res, bool chat);
  std::string Metrics();
  void Cancel(int64_t handle);
  std::vector<int32_t> Encode(const std::string& text) {
    std::lock_guard<std::mutex> lock(tokenizer_mu_);  // its word cache is not thread-safe
    return tokenizer_.Encode(text, /*add_special_tokens=*/true);
  }
  std::string Decode(const std::vector<int32_t>& ids) const {
    return tokenizer_.Decode(ids, /*skip_special_tokens=*/true);
  }

  const ServeOptions& options_;
  const ModelDims& dims_;
  const Tokenizer& tokenizer_;
  const ModelChatTemplate chat_;
  const int64_t total_pages_;
  const int ranks_;
  const int64_t created_;
  std::string served_model_;
  ApiLimits limits_;
  std::mutex tokenizer_mu_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;

  // HTTP threads → step loop.
  std::mutex mu_;
  std::condition_variable wake_;  // the step loop waits on it while idle
  struct Submit {
    int64_t handle;
    SequenceRequest sequence;
    std::shared_ptr<Channel> channel;
  };
  std::deque<Submit> submits_;
  std::vector<int64_t> cancels_;
  bool stopping_ = false;
  Clock::time_point drain_deadline_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> next_handle_{0};
  std::atomic<int64_t> waiting_{0};  // accepted requests without a first token yet
  // Streaming responses not yet released by the HTTP library (Shutdown waits for them).
  std::mutex streams_mu_;
  std::condition_variable streams_cv_;
  int64_t open_streams_ = 0;

  // The step loop's own.
  std::unordered_map<int64_t, std::shared_ptr<Channel>> channels_;

  // Metrics: counters and gauges the step loop publishes.
  std::atomic<int64_t> running_{0}, queued_{0}, free_pages_{0}, preemptions_{0};
  std::atomic<int64_t> prefix_hit_tokens_{0}, prefix_miss_tokens_{0};
  std::atomic<int64_t> swapped_out_{0}, swap_in_failures_{0}, recomputed_tokens_{0};
  std::atomic<int64_t> prompt_tokens_{0}, generated_tokens_{0}, finished_{0}, cancelled_{0};
  std::atomic<int64_t> rejected_{0};
  std::mutex replicas_mu_;
  std::vector<int64_t> replica_requests_;  // guarded by replicas_mu_: ReplicaRouter::assigned
  Histogram ttft_{{0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30}};
  Histogram itl_{{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1}};
};

absl::Status FrontEnd::Listen() {
  const size_t threads = options_.http_threads > 0
                             ? static_cast<size_t>(options_.http_threads)
                             : static_cast<size_t>(options_.max_waiting + options_.batch.max_batch + 8);
  server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_.set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  server_.set_keep_alive_timeout(2);
  server_.set_read_timeout(10);
  server_.set_write_timeout(10);
  Routes();
  // SO_REUSEADDR (a restarted server binds at once), not the library's default SO_REUSEPORT
  // (which would let a second server share the port instead of failing); keep the socket to
  // raise its listen backlog below.
  int listen_fd = -1;
  server_.set_socket_options([&listen_fd](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  if (options_.port == 0) {
    port_ = server_.bind_to_any_port(options_.host);
    if (port_ <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, " (any port)"));
    }
  } else {
    if (!server_.bind_to_port(options_.host, options_.port)) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, ":",
                                                 options_.port, " (in use, or not an address "
                                                 "of this host)"));
    }
    port_ = options_.port;
  }
  // The library listens with a backlog of 5: a burst of clients connecting at once (32 in the
  // load benchmark) overflows it and the kernel drops SYNs, which clients retry after 1 s.
  // listen() again on the bound socket only raises the backlog.
  if (listen_fd >= 0) ::listen(listen_fd, 1024);
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  std::printf("shardlm serve: listening on http://%s:%d (model \"%s\", %d ranks, context %lld)\n",
              options_.host.c_str(), port_, served_model_.c_str(), ranks_,
              static_cast<long long>(dims_.max_positions));
  std::fflush(stdout);
  return absl::OkStatus();
}

void FrontEnd::RequestStop(int sig) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    drain_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(options_.drain_seconds));
  }
  draining_ = true;
  std::fprintf(stderr, "shardlm serve: %s: no new requests; draining (up to %.0f s)\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM", options_.drain_seconds);
  wake_.notify_all();
}

void FrontEnd::Shutdown() {
  if (!thread_.joinable()) return;
  // Handlers still waiting for a result would hold the pool: fail them first (a channel
  // with its result keeps it: the handler sends the result).
  for (auto& [handle, channel] : channels_) {
    std::lock_guard<std::mutex> lock(channel->mu);
    channel->failed = true;
    channel->cv.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Submit& s : submits_) {
      std::lock_guard<std::mutex> l(s.channel->mu);
      s.channel->failed = true;
      s.channel->cv.notify_all();
    }
  }
  // The streams write their last events (the result and [DONE], or the error) before the
  // server stops: the library ends a chunked response at its next turn once stopped, so a
  // stream whose request had just finished, or been cut by the drain deadline, lost its end
  // (serve_test saw that once under ASan). Each turn waits at most 100 ms for its channel,
  // so this takes about that; the bound only guards against a client that stopped reading.
  {
    std::unique_lock<std::mutex> lock(streams_mu_);
    streams_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return open_streams_ == 0; });
  }
  server_.stop();
  thread_.join();
}

void FrontEnd::Cancel(int64_t handle) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(handle);
  }
  wake_.notify_all();
}

absl::Status FrontEnd::BeforePlan(ReplicaRouter& router) {
  auto publish = [&] {
    const ReplicaCounters c = router.Live();
    running_ = c.running();
    queued_ = c.waiting();
    free_pages_ = c.free_pages();
    preemptions_ = c.preemptions();
    prefix_hit_tokens_ = c.prefix_hit_tokens();
    prefix_miss_tokens_ = c.prefix_miss_tokens();
    swapped_out_ = c.swapped_out();
    swap_in_failures_ = c.swap_in_failures();
    recomputed_tokens_ = c.recomputed_tokens();
    std::lock_guard<std::mutex> lock(replicas_mu_);
    replica_requests_ = router.assigned();
  };
  while (true) {
    // Other replicas' tokens and results.
    RETURN_IF_ERROR(router.Poll());
    publish();
    std::deque<Submit> submits;
    std::vector<int64_t> cancels;
    bool stopping = false, past_deadline = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      submits.swap(submits_);
      cancels.swap(cancels_);
      if (submits.empty() && cancels.empty() && router.local().Idle() && !stopping_) {
        // Nothing for replica 0: wait, then back to Poll and publish. Within a millisecond
        // while other replicas work (their messages), every 250 ms once all are idle: another
        // replica sends its idle counters (its freed pages) after its last result, so the Poll
        // that took the result may have left them in the mailbox (waiting for a wake-up there
        // instead, serve_test once read 6 pages in use for good, under ASan).
        wake_.wait_for(lock, std::chrono::milliseconds(router.Idle() ? 250 : 1));
      }
      stopping = stopping_;
      past_deadline = stopping_ && Clock::now() >= drain_deadline_;
    }
    for (Submit& s : submits) {
      prompt_tokens_ += static_cast<int64_t>(s.sequence.prompt.size());
      channels_[s.handle] = std::move(s.channel);
      RETURN_IF_ERROR(router.Submit(s.handle, std::move(s.sequence)));
    }
    for (int64_t handle : cancels) {
      if (channels_.count(handle) == 0) continue;  // finished meanwhile
      ASSIGN_OR_RETURN(bool removed, router.Cancel(handle, "abort"));
      if (removed) ++cancelled_;
    }
    if (past_deadline) {
      std::vector<int64_t> open;
      for (const auto& [handle, channel] : channels_) open.push_back(handle);
      for (int64_t handle : open) {
        ASSIGN_OR_RETURN(bool removed, router.Cancel(handle, "abort"));
        if (removed) ++cancelled_;
      }
    }
    publish();
    // Work for replica 0 to plan, or the end once every replica is idle (an idle coordinator
    // plans the shutdown; the other leaders end on `end`). Otherwise (cancellations left
    // nothing to do, or only other replicas work) wait again.
    if (!router.local().Idle()) return absl::OkStatus();
    if (stopping && router.Idle()) return router.EndSubmissions();
  }
}

void FrontEnd::OnToken(int64_t handle, int32_t token, double logprob, std::string_view text) {
  auto it = channels_.find(handle);
  if (it == channels_.end()) return;
  Channel& c = *it->second;
  const Clock::time_point now = Clock::now();
  if (c.first_token) {
    c.first_token = false;
    --waiting_;
    ttft_.Observe(Seconds(now - c.arrival));
  } else {
    itl_.Observe(Seconds(now - c.last_token));
  }
  c.last_token = now;
  ++generated_tokens_;
  if (!c.streaming) return;
  std::lock_guard<std::mutex> lock(c.mu);
  c.tokens.push_back({token, logprob, std::string(text)});
  c.cv.notify_all();
}

absl::Status FrontEnd::OnResult(SequenceResult result) {
  auto it = channels_.find(result.handle);
  if (it == channels_.end()) return absl::OkStatus();
  std::shared_ptr<Channel> c = std::move(it->second);
  channels_.erase(it);
  if (c->first_token) --waiting_;  // cancelled before its first token
  ++finished_;
  std::lock_guard<std::mutex> lock(c->mu);
  c->result = std::move(result);
  c->cv.notify_all();
  return absl::OkStatus();
}

void Reply(httplib::Response& res, const ApiError& e) {
  res.status = e.http_status;
  res.set_content(e.Body(), "application/json");
}

void FrontEnd::Routes() {
  server_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.api_key.empty() || !absl::StartsWith(req.path, "/v1/")) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (req.get_header_value("Authorization") == "Bearer " + options_.api_key) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    ApiError e{401, "a valid API key is required (Authorization: Bearer KEY)",
               "authentication_error", ""};
    Reply(res, e);
    return httplib::Server::HandlerResponse::Handled;
  });
  server_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e{res.status, res.status == 413 ? "the request body is too large"
                           : res.status == 404 ? "no such endpoint"
                                               : absl::StrCat("HTTP status ", res.status),
               res.status == 404 ? "not_found_error" : "invalid_request_error", ""};
    res.set_content(e.Body(), "application/json");
  });
  server_.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        Reply(res, ApiError{500, "internal error", "server_error", ""});
      });
  server_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    // Reachable means every rank is up: the server starts after the start-up handshake, and
    // a rank's death ends the whole job.
    res.status = draining_ ? 503 : 200;
    res.set_content(draining_ ? "draining\n" : "ok\n", "text/plain");
  });
  server_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(ModelsBody(served_model_, created_, dims_.max_positions), "application/json");
  });
  server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Metrics(), "text/plain; version=0.0.4");
  });
  server_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Completions(req, res, /*chat=*/false);
  });
  server_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Completions(req, res, /*chat=*/true);
  });
}

void FrontEnd::Completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (draining_) {
    Reply(res, ApiError{503, "the server is shutting down", "server_error", ""});
    return;
  }
  ApiError error;
  auto decode_ids = [this](const std::vector<int32_t>& ids) { return Decode(ids); };
  absl::StatusOr<CompletionRequest> parsed =
      chat ? ParseChatRequest(req.body, limits_, decode_ids, &error)
           : ParseCompletionRequest(
                 req.body, limits_, [this](const std::string& text) { return Encode(text); },
                 decode_ids, &error);
  if (!parsed.ok()) {
    Reply(res, error);
    return;
  }
  if (waiting_.fetch_add(1) >= options_.max_waiting) {
    --waiting_;
    ++rejected_;
    Reply(res, ApiError{429,
                        absl::StrCat("too many requests waiting (", options_.max_waiting,
                                     ", --max-waiting); retry later"),
                        "rate_limit_error", ""});
    return;
  }
  auto request = std::make_shared<CompletionRequest>(std::move(*parsed));
  const int64_t handle = next_handle_++;
  auto channel = std::make_shared<Channel>();
  channel->streaming = request->stream;
  channel->arrival = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    submits_.push_back({handle, request->sequence, channel});
  }
  wake_.notify_all();
  const ResponseHeader header{absl::StrCat(chat ? "chatcmpl-" : "cmpl-", created_, "-", handle),
                              created_, served_model_};
  auto decode = [this](const std::vector<int32_t>& ids) { return Decode(ids); };

  if (!request->stream) {
    std::unique_lock<std::mutex> lock(channel->mu);
    channel->cv.wait(lock, [&] { return channel->result.has_value() || channel->failed; });
    if (!channel->result.has_value()) {
      Reply(res, ApiError{503, "the server stopped before the request finished", "server_error", ""});
      return;
    }
    res.set_content(CompletionBody(header, *request, *channel->result, decode), "application/json");
    return;
  }

  // Streaming: server-sent events as tokens come, [DONE] after the last chunk.
  struct StreamState {
    size_t sent = 0;  // bytes of the completion text sent
    bool echoed = false;
  };
  auto state = std::make_shared<StreamState>();
  res.set_header("Cache-Control", "no-cache");
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    ++open_streams_;
  }
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, request, channel, state, header, handle, decode](size_t, httplib::DataSink& sink) {
        std::vector<StreamedToken> tokens;
        std::optional<SequenceResult> result;
        bool failed = false;
        {
          std::unique_lock<std::mutex> lock(channel->mu);
          channel->cv.wait_for(lock, std::chrono::milliseconds(100), [&] {
            return !channel->tokens.empty() || channel->result.has_value() || channel->failed;
          });
          tokens.swap(channel->tokens);
          if (channel->result.has_value()) result = std::move(channel->result);
          failed = channel->failed;
        }
        if (!sink.is_writable()) {  // the client left: free its sequence within a step
          if (!result.has_value()) Cancel(handle);
          return false;
        }
        auto write = [&](const std::string& event) { return sink.write(event.data(), event.size()); };
        if ((request->echo || request->chat) && !state->echoed) {
          // The first event: the echoed prompt, or the chat stream's assistant role.
          state->echoed = true;
          const std::string first =
              request->chat ? ChatRoleChunk(header)
                            : CompletionChunk(header, *request, request->prompt_text, {}, nullptr,
                                              decode);
          if (!write(first)) {
            Cancel(handle);
            return false;
          }
        }
        if (!tokens.empty() && !result.has_value()) {
          std::string text;
          for (const StreamedToken& t : tokens) text += t.text;
          state->sent += text.size();
          if ((!text.empty() || request->logprobs) &&
              !write(CompletionChunk(header, *request, text, tokens, nullptr, decode))) {
            Cancel(handle);
            return false;
          }
        }
        if (result.has_value()) {
          // The text of this wake-up's tokens and what the stream held back (a stop string's
          // start that did not complete, the last bytes), then the finish and the usage.
          const std::string rest =
              state->sent < result->text.size() ? result->text.substr(state->sent) : std::string();
          write(CompletionChunk(header, *request, rest, tokens, &*result, decode));
          write("data: [DONE]\n\n");
          sink.done();
          return true;
        }
        if (failed) {
          write(absl::StrCat("data: ",
                             ApiError{503, "the server stopped before the request finished",
                                      "server_error", ""}
                                 .Body(),
                             "\n\n"));
          sink.done();
        }
        return true;
      },
      [this, channel, handle](bool success) {  // the library releases the response
        if (!success) {
          std::lock_guard<std::mutex> lock(channel->mu);
          if (!channel->result.has_value() && !channel->failed) Cancel(handle);
        }
        std::lock_guard<std::mutex> lock(streams_mu_);
        if (--open_streams_ == 0) streams_cv_.notify_all();
      });
}

std::string FrontEnd::Metrics() {
  std::string out;
  auto gauge = [&](const char* name, const char* help, int64_t value, const char* type = "gauge") {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ",
                    value, "\n");
  };
  gauge("shardlm_requests_running", "Sequences in the running batch.", running_);
  gauge("shardlm_requests_waiting",
        "Accepted requests without a first token (queued, or prefilling).", waiting_);
  gauge("shardlm_requests_queued", "Sequences waiting for admission (pages).", queued_);
  gauge("shardlm_kv_pages_total", "KV cache pages per rank (summed over replicas).",
        total_pages_);
  {
    std::lock_guard<std::mutex> lock(replicas_mu_);
    absl::StrAppend(&out,
                    "# HELP shardlm_replica_requests_total Requests given to each data-parallel "
                    "replica (--tp).\n# TYPE shardlm_replica_requests_total counter\n");
    for (size_t r = 0; r < replica_requests_.size(); ++r) {
      absl::StrAppend(&out, "shardlm_replica_requests_total{replica=\"", r, "\"} ",
                      replica_requests_[r], "\n");
    }
  }
  gauge("shardlm_kv_pages_free", "Free KV cache pages.", free_pages_);
  gauge("shardlm_kv_pages_used", "KV cache pages in use.", total_pages_ - free_pages_);
  gauge("shardlm_preemptions_total", "Sequences preempted (swapped out or recomputed later).",
        preemptions_, "counter");
  gauge("shardlm_swapped_out_total", "Preempted sequences whose KV pages went to swap.",
        swapped_out_, "counter");
  gauge("shardlm_swap_in_failures_total",
        "Swapped KV pages refused by their CRC32C check on the way back (recomputed instead).",
        swap_in_failures_, "counter");
  gauge("shardlm_recomputed_tokens_total",
        "Tokens whose KV rows were computed again after a preemption.", recomputed_tokens_,
        "counter");
  gauge("shardlm_prompt_tokens_total", "Prompt tokens submitted.", prompt_tokens_, "counter");
  gauge("shardlm_prefix_cache_hit_tokens_total",
        "Prompt tokens whose KV pages were found in the prefix cache (not computed).",
        prefix_hit_tokens_, "counter");
  gauge("shardlm_prefix_cache_miss_tokens_total",
        "Prompt tokens computed at admission (not found in the prefix cache).",
        prefix_miss_tokens_, "counter");
  gauge("shardlm_generation_tokens_total", "Tokens generated.", generated_tokens_, "counter");
  gauge("shardlm_requests_finished_total", "Requests finished (any reason).", finished_, "counter");
  gauge("shardlm_requests_cancelled_total",
        "Requests cut: the client left, or the drain deadline passed.", cancelled_, "counter");
  gauge("shardlm_requests_rejected_total", "Requests refused with 429 (queue full).", rejected_,
        "counter");
  ttft_.Write(&out, "shardlm_time_to_first_token_seconds",
              "From a request's arrival to its first generated token.");
  itl_.Write(&out, "shardlm_inter_token_latency_seconds",
             "Between consecutive generated tokens of a request.");
  return out;
}

}  // namespace

absl::Status RunServe(const ServeOptions& options, Model& model, const Replicas& replicas,
                      Watchdog* watchdog) {
  Comm& world = replicas.world;
  if (options.batch.max_model_len > 0) model.CapContext(options.batch.max_model_len);
  ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache,
                   StartUp(options.batch.cache, model, world));
  ASSIGN_OR_RETURN(std::unique_ptr<KvSwap> swap, StartSwap(options.batch.cache, *cache, world));
  model.Reserve(options.batch.max_batch_tokens);

  // Every replica's leader runs a coordinator with the tokenizer; rank 0 also serves HTTP and
  // routes the requests to the replicas (coordinator/replicas.h).
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<FrontEnd> front;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<ReplicaRouter> router;
  absl::Status start;
  if (replicas.leader()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded =
        LoadModelTokenizer(options.batch.model_dir, model.dims());
    start = loaded.status();
    if (start.ok() && *loaded == nullptr) {
      start = absl::FailedPreconditionError(
          "serve needs a tokenizer (tokenizer.json, or \"tokenizer\": \"bytes\" in config.json)");
    }
    if (start.ok()) tokenizer = std::move(*loaded);
    if (start.ok() && replicas.client()) {
      const SchedulerOptions scheduler =
          SchedulerOptionsFor(options.batch, model, *cache, swap.get());
      // A chat template with a construct the renderer lacks is a start-up error naming it.
      absl::StatusOr<ModelChatTemplate> chat = LoadChatTemplate(options.batch.model_dir);
      start = chat.status();
      if (start.ok()) {
        front = std::make_unique<FrontEnd>(options, model.dims(), *tokenizer, std::move(*chat),
                                           scheduler.num_pages * replicas.count, world.size());
        router = std::make_unique<ReplicaRouter>(
            replicas.leaders, replicas.count,
            [f = front.get()](SequenceResult r) { return f->OnResult(std::move(r)); });
        coordinator = std::make_unique<Coordinator>(scheduler, model.dims(), router->LocalSink(),
                                                    tokenizer.get());
        router->SetLocal(coordinator.get());
        router->SetTokenSink(
            [f = front.get()](int64_t handle, int32_t token, double logprob, std::string_view text) {
              f->OnToken(handle, token, logprob, text);
            });
        start = front->Listen();
      }
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(world, start));
  // The first SIGTERM drains instead of ending the job: rank 0 decides, the others follow its
  // plans (and the other replicas its `end`) until the shutdown.
  if (watchdog != nullptr) {
    watchdog->SetStopHandler(world.rank() == 0 ? std::function<void(int)>([f = front.get()](int sig) {
                                                   f->RequestStop(sig);
                                                 })
                                               : std::function<void(int)>([](int) {}));
  }
  absl::Status status;
  if (replicas.leader() && !replicas.client()) {
    status = RunReplicaLeader(model, *cache, swap.get(), replicas,
                              SchedulerOptionsFor(options.batch, model, *cache, swap.get()),
                              tokenizer.get(), /*stream=*/true);
  } else {
    std::function<absl::Status()> before_plan;
    if (router) before_plan = [f = front.get(), r = router.get()] { return f->BeforePlan(*r); };
    status = RunSteps(model, *cache, swap.get(), replicas.tp, coordinator.get(), {}, before_plan);
    if (router && status.ok()) status = router->Finish().status();
  }
  if (watchdog != nullptr) watchdog->SetStopHandler(nullptr);
  if (front != nullptr) front->Shutdown();
  if (world.rank() == 0 && status.ok()) std::fprintf(stderr, "shardlm serve: stopped\n");
  return status;
}

}  // namespace shardlm
