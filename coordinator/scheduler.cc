#include "coordinator/scheduler.h"

#include <algorithm>

#include "base/status.h"

namespace shardlm {

Scheduler::Scheduler(const SchedulerOptions& options) : options_(options) {
  CHECK_GT(options.page_size, 0);
  CHECK_GT(options.max_batch, 0);
  CHECK_GT(options.max_batch_tokens, 0);
  CHECK_GT(options.page_groups, 0);
  CHECK_EQ(options.num_pages % options.page_groups, 0);
  CHECK_MSG(options.page_groups == 1 || (!options.prefix_cache && options.swap_slots == 0),
            "page groups run without the prefix cache and swap");
  group_pages_ = std::max<int64_t>(options.num_pages / options.page_groups, 1);
  // Stacks of free ids, lowest id on top, so allocation order is deterministic.
  free_.resize(static_cast<size_t>(options.page_groups));
  for (int64_t p = options.num_pages - 1; p >= 0; --p) {
    free_[GroupOf(static_cast<int32_t>(p))].push_back(static_cast<int32_t>(p));
  }
  pages_.resize(static_cast<size_t>(options.num_pages));
  for (int64_t s = options.swap_slots - 1; s >= 0; --s) free_slots_.push_back(s);
}

int64_t Scheduler::free_pages() const {
  int64_t free = static_cast<int64_t>(evictable_.size());
  for (const std::vector<int32_t>& group : free_) free += static_cast<int64_t>(group.size());
  return free;
}

int64_t Scheduler::FreeIn(int32_t group) const {
  return static_cast<int64_t>(free_[group].size()) +
         (options_.page_groups == 1 ? static_cast<int64_t>(evictable_.size()) : 0);
}

int32_t Scheduler::TakeFreePage(int32_t group) {
  std::vector<int32_t>& free = free_[group];
  if (free.empty()) {  // one group only: the evictable cached pages are all of it
    CHECK(!evictable_.empty());
    const int32_t page = evictable_.front();
    evictable_.pop_front();
    PageState& state = pages_[page];
    table_.erase(state.key);
    state.node = 0;
    state.key.tokens.clear();
    free.push_back(page);
  }
  const int32_t page = free.back();
  free.pop_back();
  DCHECK(pages_[page].refs == 0);
  pages_[page].refs = 1;
  return page;
}

void Scheduler::SetKey(const Sequence& seq, int64_t page_index, uint64_t parent,
                       PrefixKey* key) const {
  const int64_t ps = options_.page_size;
  key->parent = parent;
  key->tokens.assign(seq.tokens.begin() + page_index * ps,
                     seq.tokens.begin() + (page_index + 1) * ps);
}

void Scheduler::MatchPrefix(const Sequence& seq, std::vector<int32_t>* pages) const {
  pages->clear();
  // Prompt logprobs need the logits of every prompt position: nothing may be skipped.
  if (!options_.prefix_cache || seq.score_positions > 0) return;
  const int64_t ps = options_.page_size;
  const int64_t last = static_cast<int64_t>(seq.tokens.size()) - 1;  // computed in any case
  PrefixKey key;
  uint64_t parent = 0;
  for (int64_t k = 0; (k + 1) * ps <= last; ++k) {
    SetKey(seq, k, parent, &key);
    const auto it = table_.find(key);
    if (it == table_.end()) break;
    pages->push_back(it->second);
    parent = pages_[it->second].node;
  }
}

void Scheduler::CachePages(Sequence* seq) {
  if (!options_.prefix_cache) return;
  const int64_t ps = options_.page_size;
  for (int64_t k = static_cast<int64_t>(seq->prefix_nodes.size());
       (k + 1) * ps <= seq->num_computed; ++k) {
    PrefixKey key;
    SetKey(*seq, k, k == 0 ? 0 : seq->prefix_nodes[k - 1], &key);
    const auto [it, inserted] = table_.try_emplace(key, seq->pages[k]);
    // Already cached under another page (two sequences computed the same prefix side by
    // side): this one stays private and is freed as any other.
    PageState& cached = pages_[it->second];
    if (inserted) {
      cached.node = next_node_++;
      cached.key = std::move(key);
    }
    seq->prefix_nodes.push_back(cached.node);
  }
}

void Scheduler::Enqueue(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }

void Scheduler::Release(Sequence* seq) {
  // Last page first: a prefix's later pages are evicted before the ones it starts with.
  for (auto it = seq->pages.rbegin(); it != seq->pages.rend(); ++it) {
    PageState& state = pages_[*it];
    CHECK_GT(state.refs, 0);
    if (--state.refs > 0) continue;
    if (state.node != 0) {
      state.lru = evictable_.insert(evictable_.end(), *it);
    } else {
      free_[GroupOf(*it)].push_back(*it);
    }
  }
  seq->pages.clear();
  seq->prefix_nodes.clear();
  if (seq->seq_id >= 0) released_.push_back(seq->seq_id);
  seq->seq_id = -1;
}

void Scheduler::ReleaseSlots(Sequence* seq) {
  for (int64_t slot : seq->swap_slots) free_slots_.push_back(slot);
  seq->swap_slots.clear();
}

void Scheduler::Preempt(size_t running_index) {
  std::unique_ptr<Sequence> victim = std::move(running_[running_index]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(running_index));
  // The pages are intact until the step's forward pass, which the ranks run after the copies.
  const int64_t keep = PagesFor(victim->num_computed);
  if (keep > 0 && static_cast<int64_t>(free_slots_.size()) >= keep) {
    for (int64_t k = 0; k < keep; ++k) {
      SwapCopy* copy = plan_->add_swap_out();
      copy->set_page(victim->pages[k]);
      copy->set_slot(free_slots_.back());
      victim->swap_slots.push_back(free_slots_.back());
      free_slots_.pop_back();
    }
    ++swapped_out_;
  } else {
    recomputed_tokens_ += victim->num_computed;
    victim->num_computed = 0;  // recompute prompt and generated tokens on readmission
  }
  Release(victim.get());
  ++victim->preemptions;
  ++total_preemptions_;
  waiting_.push_front(std::move(victim));
}

bool Scheduler::Allocate(Sequence* seq, int64_t tokens, SeqStep* step) {
  const int64_t need = PagesFor(tokens) - static_cast<int64_t>(seq->pages.size());
  if (need > FreeIn(seq->group)) return false;
  for (int64_t i = 0; i < need; ++i) {
    const int32_t page = TakeFreePage(seq->group);
    seq->pages.push_back(page);
    step->add_new_pages(page);
  }
  return true;
}

std::vector<int64_t> Scheduler::SwapInChecked(std::span<const int64_t> failed) {
  std::vector<int64_t> recomputed;
  size_t op = 0;
  for (std::unique_ptr<Sequence>& seq : swapping_in_) {
    bool ok = true;
    for (size_t k = 0; k < seq->swap_slots.size(); ++k, ++op) {
      CHECK_LT(op, failed.size());
      ok = ok && failed[op] == 0;
    }
    ReleaseSlots(seq.get());
    if (!ok) {
      ++swap_in_failures_;
      recomputed_tokens_ += seq->num_computed;
      seq->num_computed = 0;
      recomputed.push_back(seq->request_index);
    }
    ready_.push_back(std::move(seq));
  }
  CHECK_EQ(op, failed.size());
  swapping_in_.clear();
  return recomputed;
}

void Scheduler::Schedule(StepPlan* plan, std::vector<ScheduledSeq>* slices_out) {
  CHECK_MSG(swapping_in_.empty(), "SwapInChecked was not called after the last step");
  plan_ = plan;
  plan->Clear();
  plan->set_step(next_step_++);
  std::vector<ScheduledSeq>& slices = *slices_out;
  slices.clear();
  int64_t budget = options_.max_batch_tokens;
  auto add_slice = [&](Sequence* seq, int64_t count, SeqStep* step) {
    const int64_t start = seq->num_computed;
    const bool last = start + count == static_cast<int64_t>(seq->tokens.size());
    const bool sample = last && !seq->prefill_only;
    const int64_t score_tokens = std::clamp<int64_t>(seq->score_positions - start, 0, count);
    step->set_seq_id(seq->seq_id);
    step->set_start_pos(start);
    step->mutable_tokens()->Reserve(static_cast<int>(count));
    for (int64_t i = 0; i < count; ++i) step->add_tokens(seq->tokens[start + i]);
    step->set_want_logits(sample);
    step->set_score_tokens(score_tokens);
    slices.push_back({seq, start, count, sample, score_tokens});
    budget -= count;
  };

  // 1. Running sequences, oldest first; preempt the newest when pages run out.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i].get();
    const int64_t count =
        std::min<int64_t>(static_cast<int64_t>(seq->tokens.size()) - seq->num_computed, budget);
    // Planned into step_ first: it joins the plan only if the sequence is not preempted.
    SeqStep& step = step_;
    step.Clear();
    // The fields keep their capacity through Clear and Swap: after the first steps, planning
    // a running slice allocates nothing.
    step.mutable_new_pages()->Reserve(static_cast<int>(PagesFor(count) + 1));
    bool preempted_self = false;
    while (!Allocate(seq, seq->num_computed + count, &step)) {
      // The newest sequence newer than this one whose pages would help: of its group.
      size_t newest = running_.size() - 1;
      while (newest > i && running_[newest]->group != seq->group) --newest;
      if (newest == i) {
        preempted_self = true;
        break;
      }
      Preempt(newest);
    }
    if (preempted_self) {
      Preempt(i);
      continue;  // running_[i] is now the next sequence
    }
    SeqStep* added = plan->add_seqs();
    added->Swap(&step);  // swaps buffers: the plan's cleared element becomes the next step_
    add_slice(seq, count, added);
    ++i;
  }
  // 2. Sequences back from swap (or to recompute after a refused copy): they hold every page
  // their known tokens need.
  while (!ready_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_batch) {
    Sequence* seq = ready_.front().get();
    const int64_t count =
        std::min<int64_t>(static_cast<int64_t>(seq->tokens.size()) - seq->num_computed, budget);
    seq->seq_id = next_seq_id_++;
    SeqStep* step = plan->add_seqs();
    step->set_max_pages(static_cast<int32_t>(seq->pages.capacity()));
    for (int32_t page : seq->pages) step->add_new_pages(page);
    CHECK(Allocate(seq, seq->num_computed + count, step));
    add_slice(seq, count, step);
    running_.push_back(std::move(ready_.front()));
    ready_.pop_front();
  }
  // 3. Admissions, first come first served, while the whole sequence fits. A swapped-out
  // sequence takes its pages now and is copied back during this step; it runs from the next.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_batch) {
    Sequence* seq = waiting_.front().get();
    const int64_t len = static_cast<int64_t>(seq->tokens.size());
    if (!seq->swap_slots.empty()) {  // one page group (swap is off with several)
      if (PagesFor(len) > free_pages()) break;
      for (int64_t k = 0; k < PagesFor(len); ++k) seq->pages.push_back(TakeFreePage());
      for (size_t k = 0; k < seq->swap_slots.size(); ++k) {
        SwapCopy* copy = plan->add_swap_in();
        copy->set_page(seq->pages[k]);
        copy->set_slot(seq->swap_slots[k]);
      }
      swapping_in_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
      continue;
    }
    MatchPrefix(*seq, &matched_);
    const int64_t shared = static_cast<int64_t>(matched_.size());
    // Matched pages no one holds count as free but are not free to this sequence.
    int64_t matched_free = 0;
    for (int32_t page : matched_) matched_free += pages_[page].refs == 0 ? 1 : 0;
    // The group with the most free pages (the lowest of equals).
    seq->group = 0;
    for (int32_t g = 1; g < static_cast<int32_t>(options_.page_groups); ++g) {
      if (FreeIn(g) > FreeIn(seq->group)) seq->group = g;
    }
    if (PagesFor(len) - shared > FreeIn(seq->group) - matched_free) break;
    seq->seq_id = next_seq_id_++;
    SeqStep* step = plan->add_seqs();
    step->set_page_group(seq->group);
    step->set_max_pages(static_cast<int32_t>(seq->pages.capacity()));
    for (int32_t page : matched_) {
      PageState& state = pages_[page];
      if (state.refs++ == 0) evictable_.erase(state.lru);
      seq->pages.push_back(page);
      seq->prefix_nodes.push_back(state.node);
      step->add_new_pages(page);
    }
    seq->num_computed = shared * options_.page_size;
    prefix_hit_tokens_ += seq->num_computed;
    prefix_miss_tokens_ += len - seq->num_computed;
    const int64_t count = std::min<int64_t>(len - seq->num_computed, budget);
    CHECK(Allocate(seq, seq->num_computed + count, step));
    add_slice(seq, count, step);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  for (int64_t id : released_) plan->add_released(id);
  released_.clear();
  plan_ = nullptr;
}

void Scheduler::Computed(const std::vector<ScheduledSeq>& slices) {
  for (const ScheduledSeq& s : slices) {
    s.seq->num_computed = s.start_pos + s.count;
    CachePages(s.seq);
  }
}

std::unique_ptr<Sequence> Scheduler::Finish(Sequence* seq) {
  auto it = std::find_if(running_.begin(), running_.end(),
                         [seq](const auto& p) { return p.get() == seq; });
  CHECK(it != running_.end());
  std::unique_ptr<Sequence> done = std::move(*it);
  running_.erase(it);
  Release(done.get());
  return done;
}

std::unique_ptr<Sequence> Scheduler::Remove(int64_t request_index) {
  auto match = [request_index](const auto& p) { return p->request_index == request_index; };
  if (auto it = std::find_if(running_.begin(), running_.end(), match); it != running_.end()) {
    return Finish(it->get());
  }
  CHECK(swapping_in_.empty());  // SwapInChecked runs before the next requests are handled
  for (auto* queue : {&waiting_, &ready_}) {
    if (auto it = std::find_if(queue->begin(), queue->end(), match); it != queue->end()) {
      std::unique_ptr<Sequence> seq = std::move(*it);
      queue->erase(it);
      Release(seq.get());  // a ready sequence holds pages; a waiting one may hold swap slots
      ReleaseSlots(seq.get());
      return seq;
    }
  }
  return nullptr;
}

}  // namespace shardlm
