#include "coordinator/replicas.h"

#include <algorithm>
#include <set>
#include <string>

#include "base/status.h"

namespace shardlm {
namespace {

ReplicaSubmit ToProto(int64_t handle, const SequenceRequest& request) {
  ReplicaSubmit m;
  m.set_handle(handle);
  m.mutable_prompt()->Add(request.prompt.begin(), request.prompt.end());
  m.set_max_new_tokens(request.max_new_tokens);
  m.set_prompt_logprobs(request.prompt_logprobs);
  m.set_temperature(request.sampling.temperature);
  m.set_top_k(request.sampling.top_k);
  m.set_top_p(request.sampling.top_p);
  m.set_seed(request.sampling.seed);
  m.mutable_stop_ids()->Add(request.stop_ids.begin(), request.stop_ids.end());
  for (const std::string& stop : request.stop) m.add_stop(stop);
  return m;
}

SequenceRequest FromProto(const ReplicaSubmit& m) {
  SequenceRequest request;
  request.prompt.assign(m.prompt().begin(), m.prompt().end());
  request.max_new_tokens = m.max_new_tokens();
  request.prompt_logprobs = m.prompt_logprobs();
  request.sampling.temperature = m.temperature();
  request.sampling.top_k = m.top_k();
  request.sampling.top_p = m.top_p();
  request.sampling.seed = m.seed();
  request.stop_ids.insert(m.stop_ids().begin(), m.stop_ids().end());
  request.stop.assign(m.stop().begin(), m.stop().end());
  return request;
}

ReplicaResult ToProto(const SequenceResult& result) {
  ReplicaResult m;
  m.set_handle(result.handle);
  m.set_prompt_len(result.prompt_len);
  m.mutable_generated()->Add(result.generated.begin(), result.generated.end());
  m.mutable_logprobs()->Add(result.logprobs.begin(), result.logprobs.end());
  m.mutable_prompt_logprobs()->Add(result.prompt_logprobs.begin(), result.prompt_logprobs.end());
  m.set_finish_reason(result.finish_reason);
  m.set_has_text(result.has_text);
  m.set_text(result.text);
  return m;
}

// SequenceResult::finish_reason points at a string that outlives it: the reasons a remote
// replica sent are kept here (a handful: "stop", "length", "prompt", the cancel reasons).
const char* Interned(const std::string& reason) {
  static std::set<std::string>* reasons = new std::set<std::string>();
  return reasons->insert(reason).first->c_str();
}

SequenceResult FromProto(const ReplicaResult& m) {
  SequenceResult result;
  result.handle = m.handle();
  result.prompt_len = m.prompt_len();
  result.generated.assign(m.generated().begin(), m.generated().end());
  result.logprobs.assign(m.logprobs().begin(), m.logprobs().end());
  result.prompt_logprobs.assign(m.prompt_logprobs().begin(), m.prompt_logprobs().end());
  result.finish_reason = Interned(m.finish_reason());
  result.has_text = m.has_text();
  result.text = m.text();
  return result;
}

std::string Serialized(const ReplicaMessage& message) {
  std::string bytes;
  CHECK(message.SerializeToString(&bytes));
  return bytes;
}

// What a sequence owes its replica: the tokens it may still compute.
int64_t Cost(const SequenceRequest& request) {
  return static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens;
}

}  // namespace

absl::StatusOr<ReplicaSplit> SplitReplicas(Comm& world, int64_t tp) {
  absl::Status fits;
  if (tp < 1 || tp > world.size() || world.size() % tp != 0) {
    fits = absl::InvalidArgumentError(absl::StrCat(
        "--tp ", tp, " does not divide the job's ", world.size(),
        " ranks: start T·R ranks (mpirun -np) for R replicas of --tp T ranks each"));
  }
  RETURN_IF_ERROR(AgreeOnStatus(world, fits));
  ReplicaSplit split;
  split.count = world.size() / static_cast<int>(tp);
  split.replica = world.rank() / static_cast<int>(tp);
  if (split.count == 1) return split;  // the job's ranks are the one replica
  const int tp_rank = world.rank() % static_cast<int>(tp);
  absl::StatusOr<std::unique_ptr<Comm>> group = world.Split(split.replica, tp_rank);
  RETURN_IF_ERROR(AgreeOnStatus(world, group.status()));
  split.tp = std::move(*group);
  absl::StatusOr<std::unique_ptr<Comm>> leaders = world.Split(tp_rank == 0 ? 0 : -1, split.replica);
  RETURN_IF_ERROR(AgreeOnStatus(world, leaders.status()));
  absl::Status mailbox_status;
  if (*leaders) {
    absl::StatusOr<std::unique_ptr<Mailbox>> mailbox = (*leaders)->OpenMailbox();
    mailbox_status = mailbox.status();
    if (mailbox.ok()) split.leaders = std::move(*mailbox);
  }
  RETURN_IF_ERROR(AgreeOnStatus(world, mailbox_status));
  return split;
}

ReplicaCounters CountersOf(const Coordinator& c) {
  ReplicaCounters m;
  m.set_generated_tokens(c.generated_tokens());
  m.set_computed_tokens(c.computed_tokens());
  m.set_preemptions(c.total_preemptions());
  m.set_swapped_out(c.swapped_out());
  m.set_swap_in_failures(c.swap_in_failures());
  m.set_recomputed_tokens(c.recomputed_tokens());
  m.set_prefix_hit_tokens(c.prefix_hit_tokens());
  m.set_prefix_miss_tokens(c.prefix_miss_tokens());
  m.set_free_pages(c.free_pages());
  m.set_total_pages(c.total_pages());
  m.set_running(c.running());
  m.set_waiting(c.waiting());
  return m;
}

void AddCounters(const ReplicaCounters& from, ReplicaCounters* to) {
  // Every field is an int64 count that adds up over replicas, a field added later included.
  const google::protobuf::Reflection& reflection = *to->GetReflection();
  const google::protobuf::Descriptor& fields = *to->GetDescriptor();
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = fields.field(i);
    CHECK_EQ(field->cpp_type(), google::protobuf::FieldDescriptor::CPPTYPE_INT64);
    reflection.SetInt64(to, field,
                        reflection.GetInt64(*to, field) + reflection.GetInt64(from, field));
  }
}

ReplicaRouter::ReplicaRouter(Mailbox* leaders, int replicas, Coordinator::Sink sink)
    : leaders_(leaders),
      sink_(std::move(sink)),
      load_(replicas, 0),
      assigned_(replicas, 0),
      done_(replicas, false),
      counters_(replicas) {
  CHECK(replicas == 1 || leaders != nullptr);
  done_[0] = true;
}

Coordinator::Sink ReplicaRouter::LocalSink() {
  return [this](SequenceResult result) { return Delivered(std::move(result)); };
}

absl::Status ReplicaRouter::Delivered(SequenceResult result) {
  auto it = owners_.find(result.handle);
  CHECK(it != owners_.end());
  load_[it->second.replica] -= it->second.cost;
  if (it->second.replica != 0) {
    --remote_outstanding_;
    remote_generated_ += static_cast<int64_t>(result.generated.size());
    remote_computed_ += result.prompt_len + static_cast<int64_t>(result.generated.size());
  }
  owners_.erase(it);
  return sink_(std::move(result));
}

absl::Status ReplicaRouter::Submit(int64_t handle, SequenceRequest request) {
  int best = 0;
  for (int r = 1; r < static_cast<int>(load_.size()); ++r) {
    if (load_[r] < load_[best]) best = r;
  }
  const int64_t cost = Cost(request);
  load_[best] += cost;
  ++assigned_[best];
  owners_[handle] = {best, cost};
  if (best == 0) {
    local_->Submit(handle, std::move(request));
    return absl::OkStatus();
  }
  ++remote_outstanding_;
  ReplicaMessage message;
  *message.mutable_submit() = ToProto(handle, request);
  return leaders_->Send(best, Serialized(message));
}

void ReplicaRouter::SetTokenSink(Coordinator::TokenSink sink) {
  token_sink_ = sink;
  local_->SetTokenSink(std::move(sink));
}

absl::StatusOr<bool> ReplicaRouter::Cancel(int64_t handle, const char* reason) {
  auto it = owners_.find(handle);
  if (it == owners_.end()) return false;
  if (it->second.replica == 0) return local_->Cancel(handle, reason);
  if (it->second.cancelled) return false;  // asked already
  it->second.cancelled = true;
  ReplicaMessage message;
  message.mutable_cancel()->set_handle(handle);
  message.mutable_cancel()->set_reason(reason);
  RETURN_IF_ERROR(leaders_->Send(it->second.replica, Serialized(message)));
  return true;
}

absl::Status ReplicaRouter::Take(const std::function<bool()>& wait) {
  if (leaders_ == nullptr) return absl::OkStatus();
  int from = 0;
  std::string bytes;
  while (true) {
    ASSIGN_OR_RETURN(bool got, leaders_->Receive(wait(), &from, &bytes));
    if (!got) return absl::OkStatus();
    RETURN_IF_ERROR(Handle(from, bytes));
  }
}

absl::Status ReplicaRouter::Poll() {
  return Take([] { return false; });
}

ReplicaCounters ReplicaRouter::Live() const {
  ReplicaCounters total = CountersOf(*local_);
  for (size_t r = 1; r < counters_.size(); ++r) AddCounters(counters_[r], &total);
  return total;
}

absl::Status ReplicaRouter::EndSubmissions() {
  if (ended_) return absl::OkStatus();
  ended_ = true;
  ReplicaMessage message;
  message.set_end(true);
  for (int r = 1; r < static_cast<int>(load_.size()); ++r) {
    RETURN_IF_ERROR(leaders_->Send(r, Serialized(message)));
  }
  return absl::OkStatus();
}

absl::Status ReplicaRouter::Handle(int from, const std::string& bytes) {
  ReplicaMessage message;
  if (from <= 0 || from >= static_cast<int>(counters_.size()) || !message.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("replica ", from, " sent an unreadable message"));
  }
  switch (message.kind_case()) {
    case ReplicaMessage::kResult:
      if (owners_.find(message.result().handle()) == owners_.end()) {
        return absl::DataLossError(absl::StrCat("replica ", from,
                                                " returned a sequence it was not given"));
      }
      return Delivered(FromProto(message.result()));
    case ReplicaMessage::kToken: {
      const ReplicaToken& t = message.token();
      if (token_sink_ && owners_.count(t.handle()) != 0) {
        token_sink_(t.handle(), t.token(), t.logprob(), t.text());
      }
      return absl::OkStatus();
    }
    case ReplicaMessage::kCounters:
      counters_[from] = message.counters();
      return absl::OkStatus();
    case ReplicaMessage::kDone:
      counters_[from] = message.done();
      done_[from] = true;
      return absl::OkStatus();
    case ReplicaMessage::kError:
      return absl::AbortedError(absl::StrCat("replica ", from, " failed: ", message.error()));
    default:
      return absl::DataLossError(absl::StrCat("replica ", from, " sent an unexpected message"));
  }
}

absl::Status ReplicaRouter::BeforePlan() {
  return Take([this] { return local_->Idle() && remote_outstanding_ > 0; });
}

absl::StatusOr<ReplicaCounters> ReplicaRouter::Finish() {
  RETURN_IF_ERROR(
      Take([this] { return std::find(done_.begin(), done_.end(), false) != done_.end(); }));
  if (!owners_.empty()) {
    return absl::InternalError(
        absl::StrCat(owners_.size(), " sequences never came back from their replicas"));
  }
  return Live();
}

int64_t ReplicaRouter::generated_tokens() const {
  return local_->generated_tokens() + remote_generated_;
}

int64_t ReplicaRouter::computed_tokens() const {
  return local_->computed_tokens() + remote_computed_;
}

Coordinator::Sink ReplicaLeader::Sink() {
  return [this](SequenceResult result) {
    ReplicaMessage message;
    *message.mutable_result() = ToProto(result);
    return leaders_.Send(0, Serialized(message));
  };
}

Coordinator::TokenSink ReplicaLeader::TokenSink() {
  if (!stream_) return nullptr;
  return [this](int64_t handle, int32_t token, double logprob, std::string_view text) {
    ReplicaMessage message;
    ReplicaToken* t = message.mutable_token();
    t->set_handle(handle);
    t->set_token(token);
    t->set_logprob(logprob);
    t->set_text(std::string(text));
    absl::Status sent = leaders_.Send(0, Serialized(message));
    if (send_status_.ok()) send_status_ = sent;
  };
}

absl::Status ReplicaLeader::SendCounters(const Coordinator& coordinator) {
  ReplicaMessage message;
  *message.mutable_counters() = CountersOf(coordinator);
  std::string bytes = Serialized(message);
  counters_sent_ = std::chrono::steady_clock::now();
  if (bytes == last_counters_) return absl::OkStatus();
  last_counters_ = bytes;
  return leaders_.Send(0, std::move(bytes));
}

absl::Status ReplicaLeader::BeforePlan(Coordinator& coordinator) {
  RETURN_IF_ERROR(send_status_);
  if (stream_ && std::chrono::steady_clock::now() - counters_sent_ > std::chrono::milliseconds(100)) {
    RETURN_IF_ERROR(SendCounters(coordinator));
  }
  int from = 0;
  std::string bytes;
  while (true) {
    const bool wait = coordinator.Idle() && !ended_;
    // Idle: rank 0's gauges (running, free pages) must not keep this replica's last busy state.
    if (wait && stream_) RETURN_IF_ERROR(SendCounters(coordinator));
    ASSIGN_OR_RETURN(bool got, leaders_.Receive(wait, &from, &bytes));
    if (!got) return absl::OkStatus();
    ReplicaMessage message;
    if (from != 0 || !message.ParseFromString(bytes)) {
      return absl::DataLossError(absl::StrCat("an unreadable message from replica ", from));
    }
    if (message.has_submit()) {
      coordinator.Submit(message.submit().handle(), FromProto(message.submit()));
    } else if (message.has_cancel()) {
      RETURN_IF_ERROR(coordinator
                          .Cancel(message.cancel().handle(), Interned(message.cancel().reason()))
                          .status());
    } else if (message.has_end()) {
      ended_ = true;
    } else {
      return absl::DataLossError("an unexpected message from replica 0");
    }
  }
}

absl::Status ReplicaLeader::Finish(const Coordinator& coordinator, const absl::Status& status) {
  ReplicaMessage message;
  if (status.ok()) {
    *message.mutable_done() = CountersOf(coordinator);
  } else {
    message.set_error(std::string(status.message()));
  }
  return leaders_.Send(0, Serialized(message));
}

absl::Status RunReplicaLeader(Model& model, PagedKvCache& cache, KvSwap* swap,
                              const Replicas& replicas, const SchedulerOptions& scheduler,
                              const Tokenizer* tokenizer, bool stream) {
  CHECK(replicas.leader() && !replicas.client() && replicas.leaders != nullptr);
  ReplicaLeader leader(*replicas.leaders, stream);
  Coordinator coordinator(scheduler, model.dims(), leader.Sink(), tokenizer);
  coordinator.SetTokenSink(leader.TokenSink());
  const absl::Status status = RunSteps(model, cache, swap, replicas.tp, &coordinator, {},
                                       [&] { return leader.BeforePlan(coordinator); });
  const absl::Status sent = leader.Finish(coordinator, status);
  return status.ok() ? sent : status;
}

}  // namespace shardlm
