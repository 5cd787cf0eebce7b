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

constexpr int kConnectTimeoutMs = 2000;   // per address rank 0 offers
constexpr int kSettleMs = 500;            // after a peer's 'S': wait for our own signal
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

// Rank 0's IPv4 addresses, loopback last (peers on rank 0's host try it first).
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
  // A host that vanishes (no FIN) is noticed after ~8 s instead of hours.
  int on = 1, idle = 5, interval = 1, count = 3;
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

}  // namespace

struct Watchdog::Peer {
  int fd = -1;
  int rank = -1;  // -1 until its hello arrived
  std::string pid = "?", host = "?";
  std::string hello;       // bytes of the hello line received so far
  bool finished = false;   // said 'F': its end of stream is expected

  std::string Name() const {
    return absl::StrCat("rank ", rank, " (pid ", pid, " on host ", host, ")");
  }
};

Watchdog::Watchdog(int rank, int size, std::string label)
    : rank_(rank), size_(size), label_(std::move(label)) {}

std::unique_ptr<Watchdog> Watchdog::Start(Comm& comm, const std::string& label) {
  std::unique_ptr<Watchdog> w(new Watchdog(comm.rank(), comm.size(), label));
  if (comm.size() > 1) {
    // Rank 0 offers "<token> <port> <pid> <host> <address>,…"; empty: no side channel.
    std::string offer;
    if (comm.rank() == 0) {
      const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      sockaddr_in any = {};
      any.sin_family = AF_INET;
      any.sin_addr.s_addr = htonl(INADDR_ANY);
      socklen_t len = sizeof(any);
      if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof(any)) == 0 &&
          listen(fd, SOMAXCONN) == 0 &&
          getsockname(fd, reinterpret_cast<sockaddr*>(&any), &len) == 0) {
        std::random_device random;
        w->token_ = absl::StrCat(absl::Hex(random(), absl::kZeroPad8),
                                 absl::Hex(random(), absl::kZeroPad8));
        w->listen_fd_ = fd;
        offer = absl::StrCat(w->token_, " ", ntohs(any.sin_port), " ", getpid(), " ", HostName(),
                             " ", absl::StrJoin(LocalAddresses(), ","));
      } else if (fd >= 0) {
        close(fd);
      }
    }
    // A failed broadcast leaves the job without a side channel; the next
    // collective reports the MPI error itself.
    if (comm.Broadcast(&offer, 0).ok() && comm.rank() != 0 && !offer.empty()) {
      const std::vector<std::string> f = absl::StrSplit(offer, ' ');
      int port = 0;
      if (f.size() == 5 && absl::SimpleAtoi(f[1], &port)) {
        std::vector<std::string> addresses = absl::StrSplit(f[4], ',');
        if (f[3] == HostName()) addresses.insert(addresses.begin(), "127.0.0.1");
        int fd = -1;
        for (const std::string& a : addresses) {
          if ((fd = ConnectWithTimeout(a, port)) >= 0) break;
        }
        if (fd >= 0) {
          SendAll(fd, absl::StrCat(f[0], " ", comm.rank(), " ", getpid(), " ", HostName(), "\n"));
          auto peer = std::make_unique<Peer>();
          peer->fd = fd;
          peer->rank = 0;
          peer->pid = f[2];
          peer->host = f[3];
          w->peers_.push_back(std::move(peer));
        } else {
          std::fprintf(stderr,
                       "%s: warning: rank %d cannot reach rank 0 at port %d (%s); if a rank dies, "
                       "the job still ends but the message will not name it\n",
                       label.c_str(), comm.rank(), port, f[4].c_str());
        }
      }
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
  for (auto& p : peers_) close(p->fd);
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_read_ >= 0) close(wake_read_);
  if (wake_write_ >= 0) close(wake_write_);
}

void Watchdog::Reported() { Stop('Q'); }

void Watchdog::Broadcast(const std::string& bytes) {
  for (auto& p : peers_) {
    if (p->rank >= 0) SendAll(p->fd, bytes);
  }
}

void Watchdog::Quit(int code, const std::string& message) {
  ExitAfterSections(code, message, kSectionWait);
}

void Watchdog::HandleSignal(int sig) {
  Broadcast(std::string{'S', static_cast<char>(sig)});
  Quit(128 + sig, rank_ == 0 ? absl::StrCat(label_, ": stopped by ", SignalName(sig)) : "");
}

void Watchdog::HandlePeerEnd(Peer& peer) {
  if (peer.rank < 0 || peer.finished) return;  // a stray connection, or a goodbye
  // Rank 0 reports; when rank 0 is the dead one, rank 1 does.
  const bool reporter = rank_ == 0 || (peer.rank == 0 && rank_ == 1);
  std::string message;
  if (reporter) {
    message = absl::StrCat(label_, ": error: ", peer.Name(),
                           " died unexpectedly (killed, or crashed); stopped the job");
    if (peer.rank == 0) message += "; results finished before are in the output file";
  }
  Broadcast("Q");
  Quit(1, message);
}

void Watchdog::HandlePeerStatus(Peer& peer, char code, int sig) {
  if (code == 'F') {
    peer.finished = true;
  } else if (code == 'Q') {
    Broadcast("Q");  // rank 0 relays; the others have only rank 0
    Quit(1, "");
  } else if (code == 'S') {
    if (rank_ != 0) Quit(128 + sig, "");  // rank 0 stops the job
    // mpirun signals every rank at once: if ours follows, the job was stopped.
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
  if (f.size() == 4 && f[0] == token_ && absl::SimpleAtoi(f[1], &rank) && rank > 0 &&
      rank < size_) {
    peer.rank = rank;
    peer.pid = f[2];
    peer.host = f[3];
  }
}

void Watchdog::Loop() {
  while (true) {
    std::vector<pollfd> fds = {{wake_read_, POLLIN, 0}};
    if (listen_fd_ >= 0) fds.push_back({listen_fd_, POLLIN, 0});
    const size_t first_peer = fds.size();
    for (auto& p : peers_) fds.push_back({p->fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return;  // cannot watch; the job still ends by MPI or the launcher
    }
    if (fds[0].revents != 0) {
      unsigned char b = 0;
      if (read(wake_read_, &b, 1) == 1) {
        if (b == kWakeStop || b == kWakeReported) {
          Broadcast(b == kWakeStop ? "F" : "Q");
          return;
        }
        HandleSignal(b);
      }
    }
    std::vector<size_t> ended;
    for (size_t i = first_peer; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      Peer& peer = *peers_[i - first_peer];
      char buf[256];
      const ssize_t n = recv(peer.fd, buf, sizeof(buf), 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        HandlePeerEnd(peer);
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
    if (listen_fd_ >= 0 && fds[1].revents != 0) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) {
        EnableKeepAlive(fd);
        auto peer = std::make_unique<Peer>();
        peer->fd = fd;
        peers_.push_back(std::move(peer));
      }
    }
  }
}

}  // namespace shardlm
