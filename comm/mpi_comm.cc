#include "comm/mpi_comm.h"

#include <sched.h>
#include <time.h>

#include <chrono>
#include <climits>

#include "base/status.h"

namespace shardlm {

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(argc, argv);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiSession::Abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::unique_ptr<MpiComm> MpiComm::World() {
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return std::unique_ptr<MpiComm>(new MpiComm(dup));
}

absl::StatusOr<std::unique_ptr<Comm>> MpiComm::Split(int color, int key) {
  MPI_Comm split;
  RETURN_IF_ERROR(Check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &split),
                        "MPI_Comm_split"));
  if (split == MPI_COMM_NULL) return std::unique_ptr<Comm>();
  MPI_Comm_set_errhandler(split, MPI_ERRORS_RETURN);
  return std::unique_ptr<Comm>(new MpiComm(split));
}

MpiComm::MpiComm(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm_);
}

absl::Status MpiComm::Check(int code, const char* what) const {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return absl::UnavailableError(
      absl::StrCat("rank ", rank_, " of ", size_, ": ", what, " failed: ", std::string(text, len)));
}

absl::Status MpiComm::WaitPolitely(MPI_Request* request, const char* what) const {
  // Spin first (yielding, for ranks that share cores): inside a job the next message is
  // microseconds to a few milliseconds away (rank 0 sampling a large vocabulary) and a sleep
  // would add its wake-up latency to the step. Past 2 ms the root is most likely waiting for
  // work (a server between requests): poll with sleeps of at most 200 µs, so idle ranks leave
  // their cores alone at the cost of at most that much latency on the next step.
  const auto spin_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
  int done = 0;
  long sleep_ns = 20'000;
  while (true) {
    RETURN_IF_ERROR(Check(MPI_Test(request, &done, MPI_STATUS_IGNORE), what));
    if (done) return absl::OkStatus();
    if (std::chrono::steady_clock::now() < spin_until) {
      sched_yield();
      continue;
    }
    const timespec pause = {0, sleep_ns};
    nanosleep(&pause, nullptr);
    sleep_ns = std::min(sleep_ns * 2, 200'000L);
  }
}

absl::Status MpiComm::AllReduceSum(std::span<float> data) {
  if (size_ == 1 || data.empty()) return absl::OkStatus();
  // MPI counts are int; activations stay far below 2^31 elements.
  CHECK_LE(data.size(), static_cast<size_t>(INT_MAX));
  return Check(MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()), MPI_FLOAT,
                             MPI_SUM, comm_),
               "MPI_Allreduce(sum)");
}

absl::Status MpiComm::AllReduceMax(std::span<int64_t> data) {
  if (size_ == 1 || data.empty()) return absl::OkStatus();
  return Check(MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()), MPI_INT64_T,
                             MPI_MAX, comm_),
               "MPI_Allreduce(max)");
}

absl::Status MpiComm::Broadcast(std::string* bytes, int root) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " of ", size_));
  }
  if (size_ == 1) return absl::OkStatus();
  // Framing: an int64 length, then the bytes.
  // The length goes first, non-blocking on every rank (blocking and non-blocking collectives
  // do not match each other): a rank waiting for the root's next message does not spin.
  int64_t length = static_cast<int64_t>(bytes->size());
  MPI_Request request;
  RETURN_IF_ERROR(
      Check(MPI_Ibcast(&length, 1, MPI_INT64_T, root, comm_, &request), "MPI_Ibcast(length)"));
  RETURN_IF_ERROR(WaitPolitely(&request, "MPI_Ibcast(length)"));
  if (length < 0 || length > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("broadcast of ", length, " bytes"));
  }
  if (rank_ != root) bytes->resize(static_cast<size_t>(length));
  if (length == 0) return absl::OkStatus();
  return Check(MPI_Bcast(bytes->data(), static_cast<int>(length), MPI_BYTE, root, comm_),
               "MPI_Bcast(bytes)");
}

absl::Status MpiComm::Gatherv(std::span<const float> send, int root, std::vector<float>* recv,
                              std::vector<int>* counts) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("gather root ", root, " of ", size_));
  }
  CHECK_LE(send.size(), static_cast<size_t>(INT_MAX));
  int count = static_cast<int>(send.size());
  if (size_ == 1) {  // a plain copy, as LocalComm (MPI's took ~1% of a batch-16 decode step)
    counts->assign(1, count);
    recv->assign(send.begin(), send.end());
    return absl::OkStatus();
  }
  // On root the counts land in *counts and the displacements in displs_, both reused across
  // calls: the step loop gathers logits every step without allocating.
  if (rank_ == root) counts->resize(size_);
  int* all_counts = rank_ == root ? counts->data() : nullptr;
  RETURN_IF_ERROR(
      Check(MPI_Gather(&count, 1, MPI_INT, all_counts, 1, MPI_INT, root, comm_), "MPI_Gather"));
  if (rank_ == root) {
    displs_.resize(size_);
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs_[r] = static_cast<int>(total);
      total += all_counts[r];
    }
    if (total > INT_MAX) return absl::InvalidArgumentError("gatherv total exceeds INT_MAX");
    recv->resize(static_cast<size_t>(total));
  }
  RETURN_IF_ERROR(
      Check(MPI_Gatherv(send.data(), count, MPI_FLOAT, rank_ == root ? recv->data() : nullptr,
                        all_counts, displs_.data(), MPI_FLOAT, root, comm_),
            "MPI_Gatherv"));
  return absl::OkStatus();
}

absl::Status MpiComm::Barrier() { return Check(MPI_Barrier(comm_), "MPI_Barrier"); }

namespace {
constexpr int kMailboxTag = 18;
}  // namespace

absl::StatusOr<std::unique_ptr<Mailbox>> MpiComm::OpenMailbox() {
  MPI_Comm dup;
  RETURN_IF_ERROR(Check(MPI_Comm_dup(comm_, &dup), "MPI_Comm_dup"));
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return std::unique_ptr<Mailbox>(new MpiMailbox(std::unique_ptr<MpiComm>(new MpiComm(dup))));
}

MpiMailbox::~MpiMailbox() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (Outgoing& out : sending_) {
    (void)comm_->WaitPolitely(&out.request, "MPI_Isend");
  }
}

absl::Status MpiMailbox::ReapSends() {
  for (auto it = sending_.begin(); it != sending_.end();) {
    int done = 0;
    RETURN_IF_ERROR(comm_->Check(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "MPI_Isend"));
    it = done ? sending_.erase(it) : std::next(it);
  }
  return absl::OkStatus();
}

absl::Status MpiMailbox::Send(int to, std::string bytes) {
  if (to < 0 || to >= size()) {
    return absl::InvalidArgumentError(absl::StrCat("send to rank ", to, " of ", size()));
  }
  CHECK_LE(bytes.size(), static_cast<size_t>(INT_MAX));
  RETURN_IF_ERROR(ReapSends());
  Outgoing& out = sending_.emplace_back();
  out.bytes = std::move(bytes);
  return comm_->Check(MPI_Isend(out.bytes.data(), static_cast<int>(out.bytes.size()), MPI_BYTE,
                                to, kMailboxTag, comm_->comm_, &out.request),
                      "MPI_Isend");
}

absl::StatusOr<bool> MpiMailbox::Receive(bool wait, int* from, std::string* bytes) {
  long sleep_ns = 20'000;
  while (true) {
    // Sends in flight progress while this rank waits.
    RETURN_IF_ERROR(ReapSends());
    int flag = 0;
    MPI_Status status;
    RETURN_IF_ERROR(comm_->Check(
        MPI_Iprobe(MPI_ANY_SOURCE, kMailboxTag, comm_->comm_, &flag, &status), "MPI_Iprobe"));
    if (flag) {
      int count = 0;
      RETURN_IF_ERROR(comm_->Check(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count"));
      bytes->resize(static_cast<size_t>(count));
      *from = status.MPI_SOURCE;
      RETURN_IF_ERROR(comm_->Check(MPI_Recv(bytes->data(), count, MPI_BYTE, status.MPI_SOURCE,
                                            kMailboxTag, comm_->comm_, MPI_STATUS_IGNORE),
                                   "MPI_Recv"));
      return true;
    }
    if (!wait) return false;
    const timespec pause = {0, sleep_ns};
    nanosleep(&pause, nullptr);
    sleep_ns = std::min(sleep_ns * 2, 200'000L);
  }
}

}  // namespace shardlm
