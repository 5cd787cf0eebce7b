// The collective operations ShardLM needs, behind an interface passed explicitly
// (`Comm&`), so library code never names MPI_COMM_WORLD and tests can swap in
// a single-process or fault-injecting implementation.
#ifndef SHARDLM_COMM_COMM_H_
#define SHARDLM_COMM_COMM_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"

namespace shardlm {

// Point-to-point messages (the control channel between replica leaders, issue 18): bytes,
// delivered in the order each sender sent them. Send never waits for the receiver.
class Mailbox {
 public:
  virtual ~Mailbox() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual absl::Status Send(int to, std::string bytes) = 0;
  // The next message from any rank into `*from` and `*bytes`: false at once when none is
  // waiting and `wait` is false; with `wait`, blocks (politely) until one arrives.
  virtual absl::StatusOr<bool> Receive(bool wait, int* from, std::string* bytes) = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In-place elementwise sum over all ranks; every rank ends with the total.
  virtual absl::Status AllReduceSum(std::span<float> data) = 0;
  // In-place elementwise max over all ranks (used to agree on flags and sizes).
  virtual absl::Status AllReduceMax(std::span<int64_t> data) = 0;
  // `bytes` on `root` is sent; on other ranks it is replaced by the root's bytes.
  virtual absl::Status Broadcast(std::string* bytes, int root) = 0;
  // Concatenation of every rank's `send` in rank order, on `root` only; `counts`
  // (on root) receives each rank's element count. Ranks may send different sizes.
  virtual absl::Status Gatherv(std::span<const float> send, int root, std::vector<float>* recv,
                               std::vector<int>* counts) = 0;
  virtual absl::Status Barrier() = 0;
  // Collective: the ranks passing the same `color` form a new communicator, ranked by `key`;
  // a rank passing `color` < 0 takes no part and gets null.
  virtual absl::StatusOr<std::unique_ptr<Comm>> Split(int color, int key) = 0;
  // Collective: a Mailbox among this communicator's ranks.
  virtual absl::StatusOr<std::unique_ptr<Mailbox>> OpenMailbox() = 0;
};

// Broadcast of a protobuf message from `root` (serialized bytes on the wire). `wire`, when
// given, holds the bytes and keeps its capacity for the next call (the step loop's plans).
absl::Status BroadcastProto(Comm& comm, google::protobuf::MessageLite* message, int root,
                            std::string* wire = nullptr);

// Collective agreement on an error: every rank passes its own status; all ranks
// get the status of the lowest failing rank (message prefixed with "rank N: ", except for
// rank 0 when !name_rank0: an error every rank would give alike, such as a flag's)
// or OK when every rank succeeded. Must be called by all ranks.
absl::Status AgreeOnStatus(Comm& comm, const absl::Status& local, bool name_rank0 = true);

// True for a status returned by AgreeOnStatus: every rank holds the same one, so
// one rank reports it and all exit. Any other error is known to one rank only and
// must abort the job.
bool IsAgreed(const absl::Status& status);

// One process, no MPI: collectives are identities. For tests and tools.
class LocalComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  absl::Status AllReduceSum(std::span<float>) override { return absl::OkStatus(); }
  absl::Status AllReduceMax(std::span<int64_t>) override { return absl::OkStatus(); }
  absl::Status Broadcast(std::string*, int root) override;
  absl::Status Gatherv(std::span<const float> send, int root, std::vector<float>* recv,
                       std::vector<int>* counts) override;
  absl::Status Barrier() override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Comm>> Split(int color, int key) override;
  absl::StatusOr<std::unique_ptr<Mailbox>> OpenMailbox() override;
};

}  // namespace shardlm

#endif  // SHARDLM_COMM_COMM_H_
