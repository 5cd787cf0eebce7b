#include "comm/comm.h"

#include "absl/strings/cord.h"
#include "base/status.h"

namespace shardlm {
namespace {
constexpr char kAgreedPayload[] = "shardlm/agreed";
}  // namespace

absl::Status BroadcastProto(Comm& comm, google::protobuf::MessageLite* message, int root,
                            std::string* wire) {
  std::string local;
  std::string& bytes = wire != nullptr ? *wire : local;
  if (comm.rank() == root && !message->SerializeToString(&bytes)) {
    return absl::InternalError(
        absl::StrCat("rank ", comm.rank(), ": cannot serialize ", message->GetTypeName()));
  }
  RETURN_IF_ERROR(comm.Broadcast(&bytes, root));
  if (comm.rank() != root && !message->ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("rank ", comm.rank(), ": received a malformed ",
                                            message->GetTypeName(), " from rank ", root));
  }
  return absl::OkStatus();
}

absl::Status AgreeOnStatus(Comm& comm, const absl::Status& local, bool name_rank0) {
  // Max over (size - rank) picks the lowest failing rank.
  std::vector<int64_t> flag = {local.ok() ? 0 : comm.size() - comm.rank()};
  RETURN_IF_ERROR(comm.AllReduceMax(flag));
  if (flag[0] == 0) return absl::OkStatus();
  const int failing = comm.size() - static_cast<int>(flag[0]);
  std::string message;
  int64_t code = 0;
  if (comm.rank() == failing) {
    message = absl::StrCat(local.message());
    code = static_cast<int64_t>(local.code());
  }
  RETURN_IF_ERROR(comm.Broadcast(&message, failing));
  std::vector<int64_t> code_vec = {code};
  RETURN_IF_ERROR(comm.AllReduceMax(code_vec));
  const bool named = comm.size() > 1 && (failing != 0 || name_rank0);
  const std::string prefix = named ? absl::StrCat("rank ", failing, ": ") : "";
  absl::Status agreed(static_cast<absl::StatusCode>(code_vec[0]), prefix + message);
  agreed.SetPayload(kAgreedPayload, absl::Cord("1"));
  return agreed;
}

bool IsAgreed(const absl::Status& status) { return status.GetPayload(kAgreedPayload).has_value(); }

absl::Status LocalComm::Broadcast(std::string*, int root) {
  if (root != 0) return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " of 1"));
  return absl::OkStatus();
}

absl::Status LocalComm::Gatherv(std::span<const float> send, int root, std::vector<float>* recv,
                                std::vector<int>* counts) {
  if (root != 0) return absl::InvalidArgumentError(absl::StrCat("gather root ", root, " of 1"));
  recv->assign(send.begin(), send.end());
  counts->assign(1, static_cast<int>(send.size()));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Comm>> LocalComm::Split(int color, int) {
  if (color < 0) return std::unique_ptr<Comm>();
  return std::unique_ptr<Comm>(new LocalComm());
}

absl::StatusOr<std::unique_ptr<Mailbox>> LocalComm::OpenMailbox() {
  return absl::UnimplementedError("a single process has no peer to send messages to");
}

}  // namespace shardlm
