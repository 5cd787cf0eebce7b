// Ending the process from another thread without cutting work in half.
//
// The job watchdog (comm/watchdog.h) ends a rank from its own thread when a peer
// rank dies or a signal arrives. Work that must not be interrupted midway —
// writing one result line — runs inside an ExitSection; ExitAfterSections waits
// for the running section (bounded), keeps new ones from starting, and then ends
// the process. A stop note ("12 finished results are in out.jsonl") tells the
// user what survived; the results writer keeps it current.
#ifndef SHARDLM_BASE_EXIT_GUARD_H_
#define SHARDLM_BASE_EXIT_GUARD_H_

#include <chrono>
#include <functional>
#include <string>

namespace shardlm {

// RAII: while one exists, ExitAfterSections waits. Sections do not nest.
class ExitSection {
 public:
  ExitSection();
  ~ExitSection();
  ExitSection(const ExitSection&) = delete;
  ExitSection& operator=(const ExitSection&) = delete;
};

// Waits up to `wait` for the running section, writes `message` (plus "; " and
// the stop note when there is one, then a newline) to stderr unless it is
// empty, and ends the process with `code` (no destructors, no atexit).
[[noreturn]] void ExitAfterSections(int code, const std::string& message,
                                    std::chrono::milliseconds wait);

// The note is called with sections blocked, so it sees a final count. Pass an
// empty function to clear it. `owner` identifies the setter: ClearStopNote only
// clears a note set by the same owner.
void SetStopNote(const void* owner, std::function<std::string()> note);
void ClearStopNote(const void* owner);

}  // namespace shardlm

#endif  // SHARDLM_BASE_EXIT_GUARD_H_
