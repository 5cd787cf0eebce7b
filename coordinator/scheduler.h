// The coordinator's scheduler (DESIGN §4–§5), rank 0 only and free of MPI:
// continuous batching over a paged KV cache with global page ids. Each step
// takes running sequences first (oldest first), then admits waiting ones whose
// whole known sequence fits in the free pages; prompts are prefilled in chunks
// bounded by max_batch_tokens. When a running sequence needs a page and none is
// free, the newest running sequence is preempted: its pages are freed and it
// goes back to the front of the queue. Its computed pages are copied to swap slots in the
// same step when enough slots are free (StepPlan.swap_out); on readmission they are copied
// into new pages (swap_in), the ranks check each copy's CRC32C, and the next step resumes the
// sequence where it stopped — or, when a check failed or there were no slots, recomputes it
// from its first token.
//
// Prefix cache (DESIGN §4): a full page whose rows are computed is entered in a table under
// its content: the cache entry of the page before it and the page's tokens, so an entry
// stands for all tokens up to the end of its page. A sequence admitted later whose tokens
// start with cached pages takes them by reference (new_pages lists them as any other page;
// ranks cannot tell) and is prefilled from the first token after them. A page's rows depend
// only on the tokens up to it, so results do not change. Pages held by no sequence stay
// cached and count as free; they are evicted least recently released first when a free page
// is needed.
#ifndef SHARDLM_COORDINATOR_SCHEDULER_H_
#define SHARDLM_COORDINATOR_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "coordinator/sampler.h"
#include "proto/shardlm.pb.h"

namespace shardlm {

struct SchedulerOptions {
  int64_t num_pages = 0;
  int64_t page_size = 16;
  int64_t max_batch = 32;          // sequences per step
  int64_t max_batch_tokens = 512;  // tokens per step (prefill chunks + decodes)
  bool prefix_cache = false;       // share cached full pages of common prefixes
  int64_t swap_slots = 0;          // pages the swap space holds (0: preemption recomputes)
  // Data-parallel attention (ShardPlan kData): the pages split into this many equal groups,
  // group g being rank g's pool, and each sequence takes all its pages from one group (chosen
  // at admission: the one with the most free pages). Above 1, prefix_cache and swap_slots
  // must be off; a sequence needing a page preempts the newest of its own group.
  int64_t page_groups = 1;
};

// One request's state on the coordinator.
struct Sequence {
  int64_t request_index = 0;    // order of the request in the input
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t prompt_len = 0;
  int64_t num_computed = 0;    // tokens whose KV rows are in the cache
  std::vector<int32_t> pages;  // block table (global page ids)
  int32_t group = 0;           // its pages' group (SchedulerOptions::page_groups)
  // Prefix-cache entry of each leading full computed page (see Scheduler): what the next
  // full page's entry is keyed on.
  std::vector<uint64_t> prefix_nodes;
  // While swapped out: the slots holding pages [0, PagesFor(num_computed)), in order.
  std::vector<int64_t> swap_slots;
  int64_t seq_id = -1;         // id of the current admission; -1 while waiting
  int64_t preemptions = 0;
  // Prefill only (`score`): the sequence ends when its prompt is computed, nothing is sampled.
  bool prefill_only = false;
  // Positions 0 … score_positions − 1 return their logits (each predicts the next prompt
  // token: log p(token_{t+1} | tokens_≤t)); 0 for none.
  int64_t score_positions = 0;
  std::vector<double> logprobs;  // of generated tokens
  std::unique_ptr<Sampler> sampler;

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

// A scheduled slice of one sequence in a step.
struct ScheduledSeq {
  Sequence* seq;
  int64_t start_pos;     // first token of the slice
  int64_t count;         // tokens in the slice
  bool want_logits;      // the slice ends at the last known token: sample after it
  int64_t score_tokens;  // the slice's first score_tokens tokens return logits too (in order)
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerOptions& options);

  int64_t PagesFor(int64_t tokens) const {
    return (tokens + options_.page_size - 1) / options_.page_size;
  }
  // Queues a sequence (the caller has checked that it fits in the whole pool).
  void Enqueue(std::unique_ptr<Sequence> seq);
  // Plans the next step into `plan` (seqs, new pages, released ids) and `slices` (the
  // scheduled slices in plan order; empty when nothing can run). Both are cleared first and
  // keep their capacity, so steady-state steps do not allocate.
  void Schedule(StepPlan* plan, std::vector<ScheduledSeq>* slices);
  // Marks the slices of the last step computed (call after the forward pass).
  void Computed(const std::vector<ScheduledSeq>& slices);
  // The ranks' verdict on the last plan's swap_in copies, in plan order (nonzero: that copy
  // failed its CRC32C check on some rank). Call after every step whose plan had swap_in
  // copies. Returns the request indices of the sequences that will be recomputed instead.
  std::vector<int64_t> SwapInChecked(std::span<const int64_t> failed);
  // Removes a finished running sequence, frees its pages and returns it.
  std::unique_ptr<Sequence> Finish(Sequence* seq);
  // Removes the sequence of request `request_index`, running or waiting (its pages freed, its
  // admission released in the next plan); null when there is none.
  std::unique_ptr<Sequence> Remove(int64_t request_index);

  bool Idle() const {
    return running_.empty() && waiting_.empty() && ready_.empty() && swapping_in_.empty();
  }
  // Pages no sequence holds: never used, or cached and evictable.
  int64_t free_pages() const;
  // Prompt tokens of admitted sequences found in the prefix cache (not computed), and the
  // tokens computed at admission instead (the rest of the prompt; with the cache off, all).
  int64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }
  int64_t prefix_miss_tokens() const { return prefix_miss_tokens_; }
  int64_t cached_pages() const { return static_cast<int64_t>(table_.size()); }
  int64_t total_preemptions() const { return total_preemptions_; }
  // Preemptions whose pages went to swap; swap-ins refused by a CRC32C check; tokens whose
  // rows were computed again after a preemption (no swap slots, or a refused swap-in).
  int64_t swapped_out() const { return swapped_out_; }
  int64_t swap_in_failures() const { return swap_in_failures_; }
  int64_t recomputed_tokens() const { return recomputed_tokens_; }
  int64_t free_swap_slots() const { return static_cast<int64_t>(free_slots_.size()); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t waiting() const {
    return static_cast<int64_t>(waiting_.size() + ready_.size() + swapping_in_.size());
  }

 private:
  // A cached page's key: the entry of the page before it (0 for the first) and its tokens.
  struct PrefixKey {
    uint64_t parent = 0;
    std::vector<int32_t> tokens;
    bool operator==(const PrefixKey& o) const { return parent == o.parent && tokens == o.tokens; }
    template <typename H>
    friend H AbslHashValue(H h, const PrefixKey& k) {
      return H::combine(std::move(h), k.parent, k.tokens);
    }
  };
  struct PageState {
    int32_t refs = 0;   // sequences holding the page
    uint64_t node = 0;  // its prefix-cache entry (unique, never reused), 0 when not cached
    PrefixKey key;
    std::list<int32_t>::iterator lru;  // in evictable_ when cached and refs == 0
  };

  void Preempt(size_t running_index);
  void Release(Sequence* seq);
  void ReleaseSlots(Sequence* seq);
  bool Allocate(Sequence* seq, int64_t tokens, SeqStep* step);
  // A free page id of `group`: a never-used one, else the least recently released cached one.
  int32_t TakeFreePage(int32_t group = 0);
  int32_t GroupOf(int32_t page) const { return static_cast<int32_t>(page / group_pages_); }
  // Free pages of `group` (with one group: evictable cached pages included).
  int64_t FreeIn(int32_t group) const;
  // The key of seq's page `page_index` after the entry `parent` (0 for the first page).
  void SetKey(const Sequence& seq, int64_t page_index, uint64_t parent, PrefixKey* key) const;
  // Cached pages that start seq's tokens, leaving at least its last token to compute.
  void MatchPrefix(const Sequence& seq, std::vector<int32_t>* pages) const;
  // Enters seq's newly full computed pages in the table.
  void CachePages(Sequence* seq);

  SchedulerOptions options_;
  int64_t group_pages_ = 0;                         // pages per group
  // Per group: never-used or uncached free ids (a stack).
  std::vector<std::vector<int32_t>> free_;
  std::vector<PageState> pages_;                    // [num_pages]
  absl::flat_hash_map<PrefixKey, int32_t> table_;   // cached full pages
  std::list<int32_t> evictable_;                    // cached, held by none: oldest release first
  uint64_t next_node_ = 1;
  int64_t prefix_hit_tokens_ = 0;
  int64_t prefix_miss_tokens_ = 0;
  std::vector<int32_t> matched_;                    // MatchPrefix's result, reused
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order, oldest first
  std::deque<std::unique_ptr<Sequence>> waiting_;
  // Swapped-out sequences whose copies back run in the last planned step (in swap_in order),
  // then, checked, those waiting to run again: they hold every page they need.
  std::vector<std::unique_ptr<Sequence>> swapping_in_;
  std::deque<std::unique_ptr<Sequence>> ready_;
  std::vector<int64_t> free_slots_;  // a stack
  StepPlan* plan_ = nullptr;         // the plan being filled by Schedule
  int64_t swapped_out_ = 0;
  int64_t swap_in_failures_ = 0;
  int64_t recomputed_tokens_ = 0;
  std::vector<int64_t> released_;  // ids to drop in the next plan
  SeqStep step_;                   // a running slice being planned
  int64_t next_seq_id_ = 0;
  int64_t next_step_ = 0;
  int64_t total_preemptions_ = 0;
};

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_SCHEDULER_H_
