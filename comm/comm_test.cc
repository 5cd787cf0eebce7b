// Runs under mpirun with any rank count; every expectation holds for all P.
#include <algorithm>
#include <numeric>

#include "comm/mpi_test_main.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

TEST(MpiCommTest, AllReduceSumAndMax) {
  Comm& comm = TestComm();
  const int p = comm.size(), r = comm.rank();
  std::vector<float> data = {1.0f, static_cast<float>(r), static_cast<float>(r * r)};
  ASSERT_TRUE(comm.AllReduceSum(data).ok());
  EXPECT_EQ(data[0], p);
  EXPECT_EQ(data[1], p * (p - 1) / 2);
  EXPECT_EQ(data[2], (p - 1) * p * (2 * p - 1) / 6);
  std::vector<int64_t> m = {r, -r, 7};
  ASSERT_TRUE(comm.AllReduceMax(m).ok());
  EXPECT_EQ(m[0], p - 1);
  EXPECT_EQ(m[1], 0);
  EXPECT_EQ(m[2], 7);
}

TEST(MpiCommTest, BroadcastFromEveryRoot) {
  Comm& comm = TestComm();
  for (int root = 0; root < comm.size(); ++root) {
    std::string bytes = comm.rank() == root ? std::string(1000 + root, 'a' + root) : "junk";
    ASSERT_TRUE(comm.Broadcast(&bytes, root).ok());
    EXPECT_EQ(bytes, std::string(1000 + root, 'a' + root));
  }
  std::string empty = comm.rank() == 0 ? "" : "x";
  ASSERT_TRUE(comm.Broadcast(&empty, 0).ok());
  EXPECT_EQ(empty, "");
  std::string bad;
  EXPECT_FALSE(comm.Broadcast(&bad, comm.size()).ok());
}

TEST(MpiCommTest, GathervUnevenSizes) {
  Comm& comm = TestComm();
  // Rank r sends r+1 values r*100 + i (rank 0 also tests a zero-size send below).
  std::vector<float> send(comm.rank() + 1);
  for (size_t i = 0; i < send.size(); ++i) send[i] = comm.rank() * 100.0f + i;
  std::vector<float> recv;
  std::vector<int> counts;
  ASSERT_TRUE(comm.Gatherv(send, 0, &recv, &counts).ok());
  if (comm.rank() == 0) {
    ASSERT_EQ(counts.size(), static_cast<size_t>(comm.size()));
    size_t k = 0;
    for (int r = 0; r < comm.size(); ++r) {
      EXPECT_EQ(counts[r], r + 1);
      for (int i = 0; i <= r; ++i) EXPECT_EQ(recv[k++], r * 100.0f + i);
    }
    EXPECT_EQ(k, recv.size());
  }
  std::vector<float> none;
  ASSERT_TRUE(comm.Gatherv(none, 0, &recv, &counts).ok());
  if (comm.rank() == 0) {
    EXPECT_TRUE(recv.empty());
  }
}

TEST(MpiCommTest, AgreeOnStatusPicksLowestFailingRank) {
  Comm& comm = TestComm();
  EXPECT_TRUE(AgreeOnStatus(comm, absl::OkStatus()).ok());
  // Every rank from `failing` up fails; the lowest of them must win.
  const int failing = comm.size() > 1 ? 1 : 0;
  absl::Status local = comm.rank() >= failing
                           ? absl::NotFoundError(absl::StrCat("file of rank ", comm.rank()))
                           : absl::OkStatus();
  absl::Status agreed = AgreeOnStatus(comm, local);
  EXPECT_EQ(agreed.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(agreed.message().find(absl::StrCat("file of rank ", failing)), std::string::npos)
      << agreed.message();
}


TEST(MpiCommTest, SplitFormsGroupsByColor) {
  Comm& comm = TestComm();
  const int p = comm.size(), r = comm.rank();
  // Ranks by parity, ranked in reverse; rank 0 of the job takes no part when p > 2.
  const int color = (p > 2 && r == 0) ? -1 : r % 2;
  absl::StatusOr<std::unique_ptr<Comm>> group = comm.Split(color, p - r);
  ASSERT_TRUE(group.ok()) << group.status();
  if (color < 0) {
    EXPECT_EQ(*group, nullptr);
    return;
  }
  ASSERT_NE(*group, nullptr);
  std::vector<int> members;
  for (int q = 0; q < p; ++q) {
    if (q % 2 == color && !(p > 2 && q == 0)) members.push_back(q);
  }
  ASSERT_EQ((*group)->size(), static_cast<int>(members.size()));
  // Reverse order of the job's ranks: the highest member is the group's rank 0.
  const int index = static_cast<int>(std::find(members.begin(), members.end(), r) - members.begin());
  EXPECT_EQ((*group)->rank(), static_cast<int>(members.size()) - 1 - index);
  std::vector<float> sum = {static_cast<float>(r)};
  ASSERT_TRUE((*group)->AllReduceSum(sum).ok());
  EXPECT_EQ(sum[0], std::accumulate(members.begin(), members.end(), 0));
}

TEST(MpiCommTest, MailboxDeliversInOrderPerSender) {
  Comm& comm = TestComm();
  const int p = comm.size(), r = comm.rank();
  absl::StatusOr<std::unique_ptr<Mailbox>> mailbox = comm.OpenMailbox();
  ASSERT_TRUE(mailbox.ok()) << mailbox.status();
  Mailbox& box = **mailbox;
  ASSERT_EQ(box.size(), p);
  int from = -1;
  std::string bytes;
  // Nothing is sent before the barrier: Receive without wait returns at once.
  absl::StatusOr<bool> none = box.Receive(false, &from, &bytes);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(*none);
  ASSERT_TRUE(comm.Barrier().ok());
  // Every rank sends rank 0 three messages (one large: beyond any eager limit), rank 0 one
  // to every other rank; nobody waits for the receiver before sending.
  constexpr int kMessages = 3;
  for (int i = 0; i < kMessages; ++i) {
    std::string m = absl::StrCat(r, ":", i, ":");
    m.resize(i == 1 ? (1 << 20) : m.size() + i, 'x');
    ASSERT_TRUE(box.Send(0, m).ok());
  }
  if (r == 0) {
    for (int q = 1; q < p; ++q) ASSERT_TRUE(box.Send(q, absl::StrCat("to ", q)).ok());
    std::vector<int> next(p, 0);
    for (int k = 0; k < kMessages * p; ++k) {
      absl::StatusOr<bool> got = box.Receive(true, &from, &bytes);
      ASSERT_TRUE(got.ok() && *got);
      ASSERT_GE(from, 0);
      ASSERT_LT(from, p);
      const std::string prefix = absl::StrCat(from, ":", next[from], ":");
      EXPECT_EQ(bytes.substr(0, prefix.size()), prefix);
      EXPECT_EQ(bytes.size(), next[from] == 1 ? (1u << 20) : prefix.size() + next[from]);
      ++next[from];
    }
  } else {
    absl::StatusOr<bool> got = box.Receive(true, &from, &bytes);
    ASSERT_TRUE(got.ok() && *got);
    EXPECT_EQ(from, 0);
    EXPECT_EQ(bytes, absl::StrCat("to ", r));
  }
  EXPECT_FALSE(box.Send(p, "nobody").ok());
  ASSERT_TRUE(comm.Barrier().ok());
}

}  // namespace
}  // namespace shardlm
