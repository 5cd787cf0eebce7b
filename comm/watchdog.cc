#include "comm/watchdog.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/exit_guard.h"

namespace shardlm {
namespace {

constexpr int kConnectTimeoutMs = 2000;   // per address a listener offers
constexpr int kSettleMs = 500;            // after a peer's 'S': wait for our own signal
// TCP keepalive: a host that vanishes (no FIN) is noticed after at most
// idle + count * interval = 8 s instead of hours.
constexpr int kKeepIdleS = 5, kKeepIntervalS = 1, kKeepCount = 3;
// Ranks >= 2, after rank 0's death: how long to wait for rank 1's 'Q' (it
// reports) or its end of stream (dead too). Rank 0's stream ended: rank 1's
// ended at the same moment, so briefly (below mpirun's 1 s SIGTERM-to-SIGKILL).
// Rank 0's host stopped answering keepalives: rank 1's own keepalives on either
// link may take the full span to tell.
constexpr auto kVerdictWait = std::chrono::milliseconds(500);
constexpr auto kVerdictWaitHostGone =
    std::chrono::seconds(kKeepIdleS + kKeepCount * kKeepIntervalS);
constexpr auto kSectionWait = std::chrono::milliseconds(1000);  // mpirun SIGKILLs 1 s after SIGTERM
constexpr size_t kMaxHelloBytes = 1024;
constexpr unsigned char kWakeStop = 0;       // destructor: say 'F', end the loop
constexpr unsigned char kWakeReported = 255;  // Reported(): say 'Q', end the loop

// The self-pipe the signal handler writes to (one watchdog per process).
volatile sig_atomic_t g_wake_fd = -1;

void OnSignal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  if (g_wake_fd >= 0) (void)!::write(g_wake_fd, &b, 1);
  errno = saved;
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "?";
  return buf;
}

std::string SignalName(int sig) {
  if (sig == SIGINT) return "SIGINT";
  if (sig == SIGTERM) return "SIGTERM";
  return absl::StrCat("signal ", sig);
}

// This host's IPv4 addresses, loopback last (peers on this host try it first).
std::vector<std::string> LocalAddresses() {
  std::vector<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return {"127.0.0.1"};
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN];
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) == nullptr) continue;
    if (std::string(text).rfind("127.", 0) != 0) out.push_back(text);
  }
  freeifaddrs(list);
  out.push_back("127.0.0.1");
  return out;
}

void EnableKeepAlive(int fd) {
  int on = 1, idle = kKeepIdleS, interval = kKeepIntervalS, count = kKeepCount;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

// A connected, non-blocking socket, or -1.
int ConnectWithTimeout(const std::string& address, int port) {
  sockaddr_in to = {};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, address.c_str(), &to.sin_addr) != 1) return -1;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    if (errno != EINPROGRESS) {
      close(fd);
      return -1;
    }
    pollfd p = {fd, POLLOUT, 0};
    int error = 0;
    socklen_t len = sizeof(error);
    if (poll(&p, 1, kConnectTimeoutMs) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
      close(fd);
      return -1;
    }
  }
  EnableKeepAlive(fd);
  return fd;
}

void SendAll(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p = {fd, POLLOUT, 0};
      if (poll(&p, 1, 100) == 1) continue;
    }
    if (n <= 0) return;  // the peer is gone; its end of stream tells the rest
    done += static_cast<size_t>(n);
  }
}

// A listening socket for the ranks above this one, or -1. `offer` gets
// "<token> <port> <pid> <host> <address>,…" for the start-up broadcast.
int Listen(std::string* token, std::string* offer) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in any = {};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(any);
  if (bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0 || listen(fd, SOMAXCONN) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&any), &len) != 0) {
    close(fd);
    return -1;
  }
  std::random_device random;
  *token = absl::StrCat(absl::Hex(random(), absl::kZeroPad8), absl::Hex(random(), absl::kZeroPad8));
  *offer = absl::StrCat(*token, " ", ntohs(any.sin_port), " ", getpid(), " ", HostName(), " ",
                        absl::StrJoin(LocalAddresses(), ","));
  return fd;
}

// How a peer's end is described: its process ended, or its host stopped answering.
const char* Cause(bool host_gone) {
  return host_gone ? "stopped answering (its host is down or the network to it is lost)"
                   : "died unexpectedly (killed, or crashed)";
}

}  // namespace

struct Watchdog::Peer {
  int fd = -1;
  int rank = -1;  // -1 until its hello arrived
  std::string pid = "?", host = "?";
  std::string hello;       // bytes of the hello line received so far
  bool finished = false;   // said 'F' (or, on a second link, 'S'): its end of stream is expected
  // The second link, between rank 1 and a rank >= 2: it only tells the rank >= 2
  // whether rank 1 can still report rank 0's death.
  bool second = false;

  std::string Name() const {
    return absl::StrCat("rank ", rank, " (pid ", pid, " on host ", host, ")");
  }
};

Watchdog::Watchdog(int rank, int size, std::string label)
    : rank_(rank), size_(size), label_(std::move(label)) {}

void Watchdog::Connect(const std::string& offer, int to) {
  const std::vector<std::string> f = absl::StrSplit(offer, ' ');
  int port = 0;
  if (f.size() != 5 || !absl::SimpleAtoi(f[1], &port)) return;
  std::vector<std::string> addresses = absl::StrSplit(f[4], ',');
  if (f[3] == HostName()) addresses.insert(addresses.begin(), "127.0.0.1");
  int fd = -1;
  for (const std::string& a : addresses) {
    if ((fd = ConnectWithTimeout(a, port)) >= 0) break;
  }
  if (fd < 0) {
    std::fprintf(stderr,
                 "%s: warning: rank %d cannot reach rank %d at port %d (%s); if %s, the job "
                 "still ends but the message will not name it\n",
                 label_.c_str(), rank_, to, port, f[4].c_str(),
                 to == 0 ? "a rank dies" : "ranks 0 and 1 die together");
    return;
  }
  SendAll(fd, absl::StrCat(f[0], " ", rank_, " ", getpid(), " ", HostName(), "\n"));
  auto peer = std::make_unique<Peer>();
  peer->fd = fd;
  peer->rank = to;
  peer->pid = f[2];
  peer->host = f[3];
  peer->second = to == 1;
  if (peer->second) rank1_ = Rank1::kCanReport;
  peers_.push_back(std::move(peer));
}

std::unique_ptr<Watchdog> Watchdog::Start(Comm& comm, const std::string& label) {
  std::unique_ptr<Watchdog> w(new Watchdog(comm.rank(), comm.size(), label));
  // Rank 0 listens for every rank; rank 1 too, for ranks >= 2, when there are
  // any. Each broadcasts its offer; an empty offer means no side channel. A failed
  // broadcast leaves the job without one; the next collective reports the MPI
  // error itself.
  const int listeners = std::min(comm.size() - 1, 2);
  for (int root = 0; root < listeners; ++root) {
    std::string offer;
    if (comm.rank() == root) w->listen_fd_ = Listen(&w->token_, &offer);
    if (comm.Broadcast(&offer, root).ok() && comm.rank() > root && !offer.empty()) {
      w->Connect(offer, root);
    }
  }
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) == 0) {
    w->wake_read_ = pipe_fds[0];
    w->wake_write_ = pipe_fds[1];
    // A full pipe must not block the signal handler.
    fcntl(w->wake_write_, F_SETFL, fcntl(w->wake_write_, F_GETFL) | O_NONBLOCK);
    g_wake_fd = w->wake_write_;
    struct sigaction action = {};
    action.sa_handler = OnSignal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
    w->thread_ = std::thread([raw = w.get()] { raw->Loop(); });
  }
  return w;
}

void Watchdog::Stop(char goodbye) {
  if (!thread_.joinable()) return;
  const unsigned char b = goodbye == 'Q' ? kWakeReported : kWakeStop;
  (void)!::write(wake_write_, &b, 1);
  thread_.join();
}

Watchdog::~Watchdog() {
  Stop('F');
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  g_wake_fd = -1;
  for (auto& p : peers_) {
    // Read what the peer sent and this rank did not (its own goodbye, when both end at
    // once) before closing: closing with unread bytes sends a reset, and a reset can make
    // the peer drop this rank's goodbye and report it dead.
    char buf[256];
    while (recv(p->fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
    close(p->fd);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_read_ >= 0) close(wake_read_);
  if (wake_write_ >= 0) close(wake_write_);
}

void Watchdog::Reported() { Stop('Q'); }

void Watchdog::Broadcast(const std::string& bytes) {
  for (auto& p : peers_) {
    // A rank >= 2 says nothing on its second link: rank 1 must not take that
    // rank's 'Q' or 'S' for the job's end while rank 0 may be dead. Peers whose
    // hello is still unread get the bytes too: in a short job the goodbye can come
    // before this rank's loop has read a hello, and a peer left without it would
    // take this rank's end of stream for a death (a stray connection just gets
    // a byte it ignores).
    if (!(p->second && rank_ >= 2)) SendAll(p->fd, bytes);
  }
}

void Watchdog::Quit(int code, const std::string& message) {
  ExitAfterSections(code, message, kSectionWait);
}

void Watchdog::SetStopHandler(std::function<void(int sig)> handler) {
  std::lock_guard<std::mutex> lock(stop_mu_);
  stop_handler_ = std::move(handler);
}

void Watchdog::HandleSignal(int sig) {
  std::function<void(int)> handler;
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (stop_handler_ && !stop_handled_) {
      stop_handled_ = true;
      handler = stop_handler_;
    }
  }
  if (handler) {
    handler(sig);
    return;
  }
  Broadcast(std::string{'S', static_cast<char>(sig)});
  Quit(128 + sig, rank_ == 0 ? absl::StrCat(label_, ": stopped by ", SignalName(sig)) : "");
}

void Watchdog::HandlePeerEnd(Peer& peer, bool host_gone) {
  if (peer.rank < 0) return;              // a stray connection
  if (rank_ == 1 && peer.second) return;  // a rank >= 2: rank 0 reports its death
  if (peer.second) {
    // Rank 1, seen from a rank >= 2: whatever it said last, it cannot report any
    // more. Its death matters only if rank 0 is dead too.
    rank1_ = Rank1::kCannotReport;
    if (!peer.finished) dead_rank1_ = peer.Name();
    if (!dead_rank0_.empty()) ReportRank0Death();
    return;
  }
  if (peer.finished) return;  // a goodbye
  if (rank_ == 0) {
    Broadcast("Q");
    Quit(1, absl::StrCat(label_, ": error: ", peer.Name(), " ", Cause(host_gone),
                         "; stopped the job"));
  }
  // Rank 0 died: rank 1 reports. A rank >= 2 that watches rank 1 waits for its
  // 'Q' or its end of stream (see Loop) and reports if rank 1 cannot.
  dead_rank0_ = peer.Name();
  rank0_host_gone_ = host_gone;
  if (rank_ >= 2 && rank1_ == Rank1::kCanReport) {
    verdict_deadline_ =
        std::chrono::steady_clock::now() + (host_gone ? kVerdictWaitHostGone : kVerdictWait);
    return;
  }
  ReportRank0Death();
}

void Watchdog::ReportRank0Death() {
  // Rank 1 reports; if rank 1 is gone as well, rank 2, the lowest rank that
  // watched both (if ranks 0, 1 and 2 all died, nobody names them).
  const bool reporter = rank_ == 1 || (rank_ == 2 && rank1_ == Rank1::kCannotReport);
  std::string message;
  if (reporter) {
    message = absl::StrCat(label_, ": error: ", dead_rank0_);
    if (!dead_rank1_.empty()) absl::StrAppend(&message, " and ", dead_rank1_);
    absl::StrAppend(&message, " ", Cause(rank0_host_gone_),
                    "; stopped the job; results finished before are in the output file");
  }
  Broadcast("Q");
  Quit(1, message);
}

void Watchdog::HandlePeerStatus(Peer& peer, char code, int sig) {
  if (peer.second) {
    // Rank 1 only reports rank 0's death through this link (rank 0 relays all
    // else): 'Q' ends this rank quietly; 'F' and 'S' mean rank 1 will not report.
    // Rank 1 ignores what a rank >= 2 sends (it sends nothing after its hello).
    if (rank_ == 1) return;
    if (code == 'Q') Quit(1, "");
    peer.finished = true;
    rank1_ = Rank1::kCannotReport;
    if (!dead_rank0_.empty()) ReportRank0Death();
    return;
  }
  if (code == 'F') {
    peer.finished = true;
  } else if (code == 'Q') {
    Broadcast("Q");  // rank 0 relays it, and rank 1 on its second links
    Quit(1, "");
  } else if (code == 'S') {
    if (rank_ != 0) Quit(128 + sig, "");  // rank 0 stops the job
    // mpirun signals every rank at once: if ours came too, or follows, the job was stopped.
    if (pending_signal_ != 0) HandleSignal(pending_signal_);
    pollfd p = {wake_read_, POLLIN, 0};
    if (poll(&p, 1, kSettleMs) == 1) {
      unsigned char b = 0;
      if (read(wake_read_, &b, 1) == 1 && b != kWakeStop && b != kWakeReported) HandleSignal(b);
    }
    Broadcast("Q");
    Quit(128 + sig, absl::StrCat(label_, ": error: ", peer.Name(), " was stopped by ",
                                 SignalName(sig), "; stopped the job"));
  }
}

void Watchdog::OnHello(Peer& peer) {
  // "<token> <rank> <pid> <host>"; anything else is not one of our ranks.
  const std::vector<std::string> f = absl::StrSplit(peer.hello, ' ');
  int rank = -1;
  if (f.size() == 4 && f[0] == token_ && absl::SimpleAtoi(f[1], &rank) && rank > rank_ &&
      rank < size_) {
    peer.rank = rank;
    peer.pid = f[2];
    peer.host = f[3];
    peer.second = rank_ == 1;
  }
}

void Watchdog::AcceptPending() {
  if (listen_fd_ < 0) return;
  int fd;
  while ((fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
    EnableKeepAlive(fd);
    auto peer = std::make_unique<Peer>();
    peer->fd = fd;
    peers_.push_back(std::move(peer));
  }
}

void Watchdog::Loop() {
  while (true) {
    std::vector<pollfd> fds = {{wake_read_, POLLIN, 0}};
    if (listen_fd_ >= 0) fds.push_back({listen_fd_, POLLIN, 0});
    const size_t first_peer = fds.size();
    for (auto& p : peers_) fds.push_back({p->fd, POLLIN, 0});
    int timeout_ms = -1;
    if (!dead_rank0_.empty()) {
      // Waiting for rank 1's verdict on rank 0's death. Past the deadline rank 1
      // is alive but slow: it still reports, or mpirun ends the job.
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(
          verdict_deadline_ - std::chrono::steady_clock::now());
      if (left.count() <= 0) Quit(1, "");
      timeout_ms = static_cast<int>(left.count());
    }
    const int ready = poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return;  // cannot watch; the job still ends by MPI or the launcher
    }
    if (ready == 0) continue;
    // This rank's own end first: once it is stopping, its peers ending too is expected
    // (every rank leaves at once after an agreed error), not a death to report.
    unsigned char wake = 0;
    if (fds[0].revents != 0 && read(wake_read_, &wake, 1) == 1) {
      if (wake == kWakeStop || wake == kWakeReported) {
        // Ranks whose connection this loop has not accepted yet (a short job) get the
        // goodbye too: closing the listener would reset them, which reads as a death.
        AcceptPending();
        Broadcast(wake == kWakeStop ? "F" : "Q");
        return;
      }
      pending_signal_ = wake;  // handled after the peers (below), or by a peer's 'S'
    }
    std::vector<size_t> ended;
    for (size_t i = first_peer; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      Peer& peer = *peers_[i - first_peer];
      char buf[256];
      const ssize_t n = recv(peer.fd, buf, sizeof(buf), 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        // An end of stream or a reset: the peer's process died. Any other error
        // (a keepalive timeout): its host is gone.
        HandlePeerEnd(peer, n < 0 && errno != ECONNRESET);
        ended.push_back(i - first_peer);
        continue;
      }
      for (ssize_t k = 0; k < n; ++k) {
        if (peer.rank < 0) {
          if (buf[k] == '\n') {
            OnHello(peer);
          } else {
            peer.hello += buf[k];
          }
          if (peer.rank < 0 && (buf[k] == '\n' || peer.hello.size() > kMaxHelloBytes)) {
            ended.push_back(i - first_peer);  // not ours: drop it
            break;
          }
          continue;
        }
        const char code = buf[k];
        int sig = 0;
        if (code == 'S') {
          // The signal number follows; a split read waits for it briefly.
          if (k + 1 < n) {
            sig = static_cast<unsigned char>(buf[++k]);
          } else {
            unsigned char s = 0;
            pollfd p = {peer.fd, POLLIN, 0};
            if (poll(&p, 1, 100) == 1 && recv(peer.fd, &s, 1, 0) == 1) sig = s;
          }
        }
        HandlePeerStatus(peer, code, sig);
      }
    }
    for (auto it = ended.rbegin(); it != ended.rend(); ++it) {
      close(peers_[*it]->fd);
      peers_.erase(peers_.begin() + static_cast<std::ptrdiff_t>(*it));
    }
    if (listen_fd_ >= 0 && fds[1].revents != 0) AcceptPending();
    // Signals last: a peer's death and a signal in one wake-up most likely mean
    // mpirun is ending the job because of that death, so the death is reported.
    // After rank 0's death it is mpirun ending the job: keep waiting (bounded) for
    // rank 1's verdict, so the death is reported.
    if (pending_signal_ != 0 && dead_rank0_.empty()) HandleSignal(pending_signal_);
    pending_signal_ = 0;
  }
}

}  // namespace shardlm
