// Data-parallel replicas (issue 18). `--tp T` under `mpirun -np T·R` runs R copies of a T-rank
// tensor-parallel group, each with its own weights shard, paged KV cache and step loop: world
// rank r·T + t is rank t of replica r, and replica r's rank 0 (its "leader") runs its
// coordinator. World rank 0 — replica 0's leader — is also the job's client: it reads the
// requests, gives each to the least-loaded replica (by the tokens it still owes: prompt plus
// max_new_tokens of the sequences it holds) and writes every replica's results as they come.
//
// The leaders talk over a Mailbox of their own (proto ReplicaMessage): rank 0 sends `submit`s
// and, once the client has no more, `end`; a leader sends each `result`, and when its replica is
// idle after `end` its counters (`done`) — or the error that stopped it (`error`). Replica 0's
// loop does rank 0's side between its own steps; while replica 0 is idle and another still
// works, rank 0 waits on the mailbox.
#ifndef SHARDLM_COORDINATOR_REPLICAS_H_
#define SHARDLM_COORDINATOR_REPLICAS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/comm.h"
#include "coordinator/coordinator.h"
#include "proto/shardlm.pb.h"

namespace shardlm {

// This rank's place among the replicas. `world` is every rank of the job, `tp` this rank's
// replica; `leaders` (replica leaders only, when there are several replicas) is the leaders'
// mailbox, in which replica r is rank r.
struct Replicas {
  Comm& world;
  Comm& tp;
  Mailbox* leaders = nullptr;
  int replica = 0;
  int count = 1;

  bool leader() const { return tp.rank() == 0; }
  bool client() const { return world.rank() == 0; }
};

// The communicators behind a Replicas, owned.
struct ReplicaSplit {
  std::unique_ptr<Comm> tp;
  std::unique_ptr<Mailbox> leaders;
  int replica = 0;
  int count = 1;
  // Null tp: one replica, the job's ranks.
  Replicas View(Comm& world) const {
    return {world, tp ? *tp : world, leaders.get(), replica, count};
  }
};

// Collective over `world`: replicas of `tp` ranks each. An error every rank agrees on when
// `tp` does not divide the job's ranks.
absl::StatusOr<ReplicaSplit> SplitReplicas(Comm& world, int64_t tp);

ReplicaCounters CountersOf(const Coordinator& coordinator);
void AddCounters(const ReplicaCounters& from, ReplicaCounters* to);

// World rank 0's side: submissions go to a replica, every replica's results to `sink`.
class ReplicaRouter {
 public:
  // `leaders` may be null (one replica): everything runs on `local`.
  ReplicaRouter(Mailbox* leaders, int replicas, Coordinator::Sink sink);
  // The Sink of replica 0's coordinator (created after the router, given it by SetLocal).
  Coordinator::Sink LocalSink();
  void SetLocal(Coordinator* local) { local_ = local; }
  Coordinator& local() const { return *local_; }

  // Tokens of every replica as they are sampled (a streaming client; the leaders send them
  // when their ReplicaLeader streams).
  void SetTokenSink(Coordinator::TokenSink sink);

  absl::Status Submit(int64_t handle, SequenceRequest request);
  // Coordinator::Cancel on the sequence's replica. For another replica the result (with
  // `reason`) comes later; true when the sequence had not come back yet and was not cancelled
  // before.
  absl::StatusOr<bool> Cancel(int64_t handle, const char* reason);
  // No more submissions: every leader may end once idle. Once; later calls do nothing.
  absl::Status EndSubmissions();
  // Every replica is idle: no sequence is out.
  bool Idle() const { return local_->Idle() && remote_outstanding_ == 0; }
  // Hands on what arrived from the other replicas, without waiting.
  absl::Status Poll();
  // Between replica 0's steps: hands on the results that arrived; while replica 0 is idle and
  // another replica still owes results, waits for them. An error a replica sent is returned.
  absl::Status BeforePlan();
  // After replica 0's loop: every leader's counters, summed with replica 0's.
  absl::StatusOr<ReplicaCounters> Finish();

  // Tokens generated (and computed) so far, summed over replicas: replica 0's live counters,
  // the other replicas' as of their results.
  int64_t generated_tokens() const;
  int64_t computed_tokens() const;
  // Sequences given to each replica.
  const std::vector<int64_t>& assigned() const { return assigned_; }
  // Replica 0's counters now plus the others' latest (streaming leaders send theirs every
  // 100 ms while they work).
  ReplicaCounters Live() const;

 private:
  absl::Status Delivered(SequenceResult result);
  absl::Status Handle(int from, const std::string& bytes);
  // Hands on every message that arrives, waiting for the next one while `wait` holds.
  absl::Status Take(const std::function<bool()>& wait);

  Mailbox* leaders_;
  Coordinator::Sink sink_;
  Coordinator* local_ = nullptr;
  std::vector<int64_t> load_;      // per replica: the tokens its sequences still owe
  std::vector<int64_t> assigned_;  // per replica: sequences given to it
  struct Owner {
    int replica;
    int64_t cost;
    bool cancelled = false;  // a cancel went to its (other) replica
  };
  std::unordered_map<int64_t, Owner> owners_;  // by handle, until its result
  int64_t remote_outstanding_ = 0;
  int64_t remote_generated_ = 0, remote_computed_ = 0;
  std::vector<bool> done_;  // per replica: its counters arrived
  std::vector<ReplicaCounters> counters_;  // per replica: the latest it sent
  Coordinator::TokenSink token_sink_;
  bool ended_ = false;  // EndSubmissions was called
};

// A leader's side (world rank ≠ 0): its coordinator's Sink sends each result to rank 0, and
// BeforePlan takes rank 0's submissions between steps, waiting while the replica is idle until
// `end`; Finish then sends the counters, or the error that ended the replica's loop.
class ReplicaLeader {
 public:
  // `stream`: also send every token as it is sampled, and the counters every 100 ms (serve).
  ReplicaLeader(Mailbox& leaders, bool stream) : leaders_(leaders), stream_(stream) {}
  Coordinator::Sink Sink();
  // Null unless streaming.
  Coordinator::TokenSink TokenSink();
  absl::Status BeforePlan(Coordinator& coordinator);
  absl::Status Finish(const Coordinator& coordinator, const absl::Status& status);

 private:
  // Sends the coordinator's counters unless they are the ones sent last.
  absl::Status SendCounters(const Coordinator& coordinator);

  Mailbox& leaders_;
  const bool stream_;
  std::string last_counters_;  // serialized
  bool ended_ = false;
  absl::Status send_status_;  // of a token send (TokenSink returns nothing)
  std::chrono::steady_clock::time_point counters_sent_;
};

// The job of a replica leader other than rank 0, after start-up (every job that runs steps: its
// cache, swap space and scheduler options as rank 0's): a coordinator behind a ReplicaLeader
// runs the sequences rank 0 sends until its `end`, then reports. `stream`: as ReplicaLeader.
absl::Status RunReplicaLeader(Model& model, PagedKvCache& cache, KvSwap* swap,
                              const Replicas& replicas, const SchedulerOptions& scheduler,
                              const Tokenizer* tokenizer, bool stream);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_REPLICAS_H_
