// The job watchdog: a dead rank or a stop signal ends the whole job within
// about a second, with one message that names the cause.
//
// MPI (OpenMPI without ULFM) does not tell the survivors that a peer died: they
// block in the next collective until the launcher kills them, and with
// `mpirun -q` nobody says which rank died. So every rank keeps a TCP connection
// to rank 0 beside MPI (a star; rank 0 listens on an ephemeral port it
// broadcasts at start-up). Ranks >= 2 keep a second connection, to rank 1 (which
// listens and broadcasts its port the same way), so that a report still comes
// when ranks 0 and 1 die together (the host holding both dies). The kernel
// closes a process's sockets when it dies, however it dies, so an end of stream
// that no goodbye byte announced means the peer died. Wire format, after the
// connection is made (both links alike):
//   peer → listener, once: "<token> <rank> <pid> <host>\n"  (token: the
//                          listener's random job token, so stray connections
//                          are ignored)
//   either way, any time: one status byte —
//     'F'        finished: this rank ends normally; its end of stream is expected
//     'S' <sig>  stopping on signal <sig> (SIGINT/SIGTERM)
//     'Q'        the job is ending and the cause was reported; exit quietly
//   On a second link only rank 1 sends status bytes; a rank >= 2 sends its hello
//   and nothing more (rank 0 relays what matters to rank 1).
// Decisions (taken on the watchdog thread; it never calls MPI):
//   - a peer's stream ends with no status before it: the peer died. Rank 0
//     reports "rank R (pid P on host H) died …" ("… stopped answering …" when a
//     keepalive timed out: the host or the network is gone), tells the others to quit, and
//     every rank exits 1. Rank 1 and ranks >= 2 leave the deaths of ranks >= 1
//     to rank 0.
//   - rank 0 died: rank 1 reports it and sends 'Q' on both links. A rank >= 2
//     waits up to 0.5 s (8 s if rank 0's host stopped answering keepalives)
//     for rank 1's 'Q'; signals meanwhile are mpirun ending the job, and wait
//     too. If rank 1's second stream ends instead, or rank 1 said 'F' or 'S',
//     rank 1 will not report: rank 2 does, naming rank 1 too if it died
//     ("rank 0 (…) and rank 1 (…) died …"). If ranks 0, 1 and 2 all die, the
//     job still ends but nobody names them.
//   - SIGINT/SIGTERM here (mpirun forwards both as SIGTERM): tell the peers, and
//     rank 0 reports "stopped by SIGTERM"; exit 128 + signal.
//   - 'S' from a peer: rank 0 waits briefly for its own signal (mpirun signals
//     every rank at once) and otherwise reports that rank as stopped.
// Exits go through ExitAfterSections, so a result line being written completes
// and the message ends with how many results the output file holds.
#ifndef SHARDLM_COMM_WATCHDOG_H_
#define SHARDLM_COMM_WATCHDOG_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
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

  // A job that stops gracefully (`serve` drains its requests): the first SIGINT/SIGTERM
  // calls `handler` (on the watchdog thread) instead of ending the job, and tells no peer; a
  // second one ends the job as usual. Null restores the default.
  void SetStopHandler(std::function<void(int sig)> handler);

 private:
  struct Peer;
  Watchdog(int rank, int size, std::string label);
  void Loop();
  void Stop(char goodbye);  // main thread: ask the loop to send `goodbye` and end
  // Ends the job, unless a stop handler takes the first signal (then it returns).
  void HandleSignal(int sig);
  void HandlePeerEnd(Peer& peer, bool host_gone);
  void HandlePeerStatus(Peer& peer, char code, int sig);
  void OnHello(Peer& peer);  // a complete hello line arrived
  void AcceptPending();      // every connection waiting on the listener becomes a peer
  void Connect(const std::string& offer, int to);  // start-up: join rank `to`'s listener
  [[noreturn]] void ReportRank0Death();            // rank 0 (and maybe rank 1) died: quit
  void Broadcast(const std::string& bytes);
  [[noreturn]] void Quit(int code, const std::string& message);

  const int rank_;
  const int size_;
  const std::string label_;
  std::string token_;  // this rank's listener's (ranks 0 and 1)
  int listen_fd_ = -1;
  int wake_read_ = -1, wake_write_ = -1;  // self-pipe: signal numbers, 0 = stop
  int pending_signal_ = 0;  // a signal read from the pipe in this wake-up, not yet handled
  std::vector<std::unique_ptr<Peer>> peers_;
  // Ranks >= 2 only: can rank 1 still report rank 0's death? kCanReport while its
  // second link is open and it said neither 'F' nor 'S'; kNoLink: this rank
  // cannot tell, so it leaves the report to rank 1 as before.
  enum class Rank1 { kNoLink, kCanReport, kCannotReport };
  Rank1 rank1_ = Rank1::kNoLink;
  std::string dead_rank0_, dead_rank1_;                     // Peer::Name() of each once it died
  bool rank0_host_gone_ = false;  // rank 0's host stopped answering (not only its process)
  std::chrono::steady_clock::time_point verdict_deadline_;  // see kVerdictWait
  std::mutex stop_mu_;
  std::function<void(int)> stop_handler_;  // guarded by stop_mu_
  bool stop_handled_ = false;              // the handler had its signal
  std::thread thread_;
};

}  // namespace shardlm

#endif  // SHARDLM_COMM_WATCHDOG_H_
