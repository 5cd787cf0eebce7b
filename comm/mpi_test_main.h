// The main() of the gtest binaries that run under mpirun (comm/mpi_test_main.cc): MPI is
// initialized, every rank runs every test and only rank 0 prints the report (all ranks still
// fail the exit code). Tests reach the job's communicator through TestComm().
#ifndef SHARDLM_COMM_MPI_TEST_MAIN_H_
#define SHARDLM_COMM_MPI_TEST_MAIN_H_

#include "comm/comm.h"

namespace shardlm {

// MPI_COMM_WORLD's duplicate, for the whole test run.
Comm& TestComm();

}  // namespace shardlm

#endif  // SHARDLM_COMM_MPI_TEST_MAIN_H_
