// Runs under mpirun with any rank count; every expectation holds for all P.
#include <numeric>

#include "comm/mpi_comm.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

Comm* g_comm = nullptr;

TEST(MpiCommTest, AllReduceSumAndMax) {
  Comm& comm = *g_comm;
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
  Comm& comm = *g_comm;
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
  Comm& comm = *g_comm;
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
  Comm& comm = *g_comm;
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


}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) {
  shardlm::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = shardlm::MpiComm::World();
  shardlm::g_comm = comm.get();
  // Only rank 0 prints the gtest report; all ranks still fail the exit code.
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int result = RUN_ALL_TESTS();
  return result;
}
