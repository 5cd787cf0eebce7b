#include "comm/mpi_test_main.h"

#include "comm/mpi_comm.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {
Comm* g_comm = nullptr;
}  // namespace

Comm& TestComm() { return *g_comm; }

}  // namespace shardlm

int main(int argc, char** argv) {
  shardlm::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = shardlm::MpiComm::World();
  shardlm::g_comm = comm.get();
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  return RUN_ALL_TESTS();
}
