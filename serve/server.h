// `shardlm serve` (DESIGN §9): an OpenAI-compatible HTTP server on rank 0, feeding the same
// coordinator and step loop as `decode`. The HTTP threads parse, check and tokenize requests
// and hand them to the step loop through an inbox; the step loop submits them between steps
// (continuous batching), streams each sampled token into the request's channel and cancels the
// sequences whose clients left. The HTTP side never calls MPI and never blocks a step.
#ifndef SHARDLM_SERVE_SERVER_H_
#define SHARDLM_SERVE_SERVER_H_

#include <string>

#include "absl/status/status.h"
#include "comm/comm.h"
#include "comm/watchdog.h"
#include "coordinator/decode.h"
#include "coordinator/replicas.h"
#include "engine/model.h"

namespace shardlm {

struct ServeOptions {
  BatchOptions batch;  // model, cache and batching flags, as decode's
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (printed)
  std::string api_key;
  std::string served_model_name;  // default: the model directory's name
  int64_t max_waiting = 256;      // accepted requests without a first token; beyond: 429
  int64_t max_body_bytes = 1 << 20;
  double drain_seconds = 30.0;  // after SIGTERM: finish running requests this long, then cut
  int http_threads = 0;         // 0: max_waiting + max_batch + 8
};

// Runs the server until SIGTERM/SIGINT (drained) or an error; every rank calls it. `watchdog`
// is told to hand the first stop signal to the server instead of ending the job.
absl::Status RunServe(const ServeOptions& options, Model& model, const Replicas& replicas,
                      Watchdog* watchdog);

}  // namespace shardlm

#endif  // SHARDLM_SERVE_SERVER_H_
