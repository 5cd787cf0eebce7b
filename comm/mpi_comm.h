// MPI implementation of Comm. Errors come back as absl::Status naming the rank
// (the communicator uses MPI_ERRORS_RETURN).
#ifndef SHARDLM_COMM_MPI_COMM_H_
#define SHARDLM_COMM_MPI_COMM_H_

#include <mpi.h>

#include <list>
#include <memory>

#include "comm/comm.h"

namespace shardlm {

// Owns MPI_Init/MPI_Finalize for the process lifetime of one command.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Ends the whole job now (all ranks) with `code`; for errors that one rank
  // cannot report collectively.
  [[noreturn]] static void Abort(int code);
};

class MpiComm final : public Comm {
 public:
  // Duplicates MPI_COMM_WORLD with error return semantics.
  static std::unique_ptr<MpiComm> World();
  ~MpiComm() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduceSum(std::span<float> data) override;
  absl::Status AllReduceMax(std::span<int64_t> data) override;
  absl::Status Broadcast(std::string* bytes, int root) override;
  absl::Status Gatherv(std::span<const float> send, int root, std::vector<float>* recv,
                       std::vector<int>* counts) override;
  absl::Status Barrier() override;
  absl::StatusOr<std::unique_ptr<Comm>> Split(int color, int key) override;  // MPI_Comm_split
  absl::StatusOr<std::unique_ptr<Mailbox>> OpenMailbox() override;

 private:
  explicit MpiComm(MPI_Comm comm);
  absl::Status Check(int code, const char* what) const;
  // Completes a non-blocking operation: spins briefly, then sleeps between polls.
  absl::Status WaitPolitely(MPI_Request* request, const char* what) const;

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> displs_;  // Gatherv's displacements on root, reused

  friend class MpiMailbox;
};

// Mailbox over a communicator of its own (a duplicate of `comm`'s, so its messages never match
// a collective's). Sends are non-blocking; the destructor waits for those still in flight.
class MpiMailbox final : public Mailbox {
 public:
  ~MpiMailbox() override;

  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  absl::Status Send(int to, std::string bytes) override;
  absl::StatusOr<bool> Receive(bool wait, int* from, std::string* bytes) override;

 private:
  friend class MpiComm;
  explicit MpiMailbox(std::unique_ptr<MpiComm> comm) : comm_(std::move(comm)) {}
  absl::Status ReapSends();  // forgets the sends that completed

  struct Outgoing {
    MPI_Request request;
    std::string bytes;  // kept alive until the send completes
  };
  std::unique_ptr<MpiComm> comm_;
  std::list<Outgoing> sending_;
};

}  // namespace shardlm

#endif  // SHARDLM_COMM_MPI_COMM_H_
