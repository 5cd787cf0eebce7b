// The job watchdog: a dead rank or a stop signal ends the whole job within
// about a second, with one message that names the cause.
//
// MPI (OpenMPI without ULFM) does not tell the survivors that a peer died: they
// block in the next collective until the launcher kills them, and with
// `mpirun -q` nobody says which rank died. So every rank keeps a TCP connection
// to rank 0 beside MPI (a star; rank 0 listens on an ephemeral port it
// broadcasts at start-up). The kernel closes a process's sockets when it dies,
// however it dies, so an end of stream that no goodbye byte announced means the
// peer died. Wire format, after the connection is made:
//   peer → rank 0, once:  "<token> <rank> <pid> <host>\n"  (token: rank 0's
//                          random job token, so stray connections are ignored)
//   either way, any time: one status byte —
//     'F'        finished: this rank ends normally; its end of stream is expected
//     'S' <sig>  stopping on signal <sig> (SIGINT/SIGTERM)
//     'Q'        the job is ending and the cause was reported; exit quietly
// Decisions (taken on the watchdog thread; it never calls MPI):
//   - a peer's stream ends with no status before it: the peer died. Rank 0
//     reports "rank R (pid P on host H) died …" (rank 1 reports rank 0's death),
//     tells the others to quit, and every rank exits 1.
//   - SIGINT/SIGTERM here (mpirun forwards both as SIGTERM): tell the peers, and
//     rank 0 reports "stopped by SIGTERM"; exit 128 + signal.
//   - 'S' from a peer: rank 0 waits briefly for its own signal (mpirun signals
//     every rank at once) and otherwise reports that rank as stopped.
// Exits go through ExitAfterSections, so a result line being written completes
// and the message ends with how many results the output file holds.
#ifndef SHARDLM_COMM_WATCHDOG_H_
#define SHARDLM_COMM_WATCHDOG_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/comm.h"

namespace shardlm {

class Watchdog {
 public:
  // Collective over `comm`. `label` starts every message ("shardlm decode").
  // Installs SIGINT/SIGTERM handlers until destruction. Never fails: without a
  // side channel (no network) the signals are still handled.
  static std::unique_ptr<Watchdog> Start(Comm& comm, const std::string& label);
  // Normal end (success or an error every rank agreed on): says goodbye to the
  // peers, stops the thread and restores the default signal handlers.
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // This rank reported an error and is about to abort the job: peers exit
  // quietly instead of reporting it as a death.
  void Reported();

 private:
  struct Peer;
  Watchdog(int rank, int size, std::string label);
  void Loop();
  void Stop(char goodbye);  // main thread: ask the loop to send `goodbye` and end
  [[noreturn]] void HandleSignal(int sig);
  void HandlePeerEnd(Peer& peer);
  void HandlePeerStatus(Peer& peer, char code, int sig);
  void OnHello(Peer& peer);  // a complete hello line arrived
  void Broadcast(const std::string& bytes);
  [[noreturn]] void Quit(int code, const std::string& message);

  const int rank_;
  const int size_;
  const std::string label_;
  std::string token_;
  int listen_fd_ = -1;
  int wake_read_ = -1, wake_write_ = -1;  // self-pipe: signal numbers, 0 = stop
  std::vector<std::unique_ptr<Peer>> peers_;
  std::thread thread_;
};

}  // namespace shardlm

#endif  // SHARDLM_COMM_WATCHDOG_H_
