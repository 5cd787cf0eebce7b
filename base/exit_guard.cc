#include "base/exit_guard.h"

#include <unistd.h>

#include <mutex>

namespace shardlm {
namespace {

std::timed_mutex& SectionMutex() {
  static auto* mu = new std::timed_mutex;  // never destroyed: used until _exit
  return *mu;
}

struct Note {
  std::mutex mu;
  const void* owner = nullptr;
  std::function<std::string()> note;
};

Note& StopNote() {
  static auto* note = new Note;
  return *note;
}

}  // namespace

ExitSection::ExitSection() { SectionMutex().lock(); }
ExitSection::~ExitSection() { SectionMutex().unlock(); }

void ExitAfterSections(int code, const std::string& message, std::chrono::milliseconds wait) {
  // Never unlocked: the process ends while holding it, so no section starts.
  // A section stuck past `wait` (a write to a hung file system) is abandoned.
  (void)SectionMutex().try_lock_for(wait);
  if (!message.empty()) {
    std::string line = message;
    {
      Note& n = StopNote();
      std::lock_guard<std::mutex> lock(n.mu);
      if (n.note) {
        const std::string extra = n.note();
        if (!extra.empty()) line += "; " + extra;
      }
    }
    line += '\n';
    size_t done = 0;
    while (done < line.size()) {
      const ssize_t k = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
      if (k <= 0) break;
      done += static_cast<size_t>(k);
    }
  }
  ::_exit(code);
}

void SetStopNote(const void* owner, std::function<std::string()> note) {
  Note& n = StopNote();
  std::lock_guard<std::mutex> lock(n.mu);
  n.owner = owner;
  n.note = std::move(note);
}

void ClearStopNote(const void* owner) {
  Note& n = StopNote();
  std::lock_guard<std::mutex> lock(n.mu);
  if (n.owner != owner) return;
  n.owner = nullptr;
  n.note = nullptr;
}

}  // namespace shardlm
