#include "coordinator/scheduler.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

std::vector<ScheduledSeq> ScheduleStep(Scheduler& scheduler, StepPlan* plan) {
  std::vector<ScheduledSeq> slices;
  scheduler.Schedule(plan, &slices);
  return slices;
}

std::unique_ptr<Sequence> MakeSeq(int64_t index, int64_t prompt_len) {
  auto seq = std::make_unique<Sequence>();
  seq->request_index = index;
  for (int64_t i = 0; i < prompt_len; ++i) seq->tokens.push_back(static_cast<int32_t>(i % 7));
  seq->prompt_len = prompt_len;
  return seq;
}

// Drives the scheduler like the decode loop does, checking invariants every step.
struct Simulation {
  SchedulerOptions options;
  std::vector<int64_t> target_new;  // tokens to generate per request
  int64_t steps = 0, finished = 0;

  void Run(Scheduler& scheduler, int64_t max_steps = 100000) {
    std::map<int64_t, std::vector<int32_t>> tables;  // what the workers would hold
    std::map<int64_t, int32_t> groups;               // page group of each admission
    while (!scheduler.Idle() && steps < max_steps) {
      StepPlan plan;
      auto slices = ScheduleStep(scheduler, &plan);
      ASSERT_FALSE(slices.empty()) << "stalled at step " << steps;
      ++steps;
      for (int64_t id : plan.released()) {
        ASSERT_EQ(tables.erase(id), 1u);
        groups.erase(id);
      }
      int64_t tokens = 0;
      std::set<int32_t> used;
      ASSERT_LE(plan.seqs_size(), options.max_batch);
      for (int i = 0; i < plan.seqs_size(); ++i) {
        const SeqStep& s = plan.seqs(i);
        auto& table = tables[s.seq_id()];
        groups.try_emplace(s.seq_id(), s.page_group());  // a new seq_id is an admission
        table.insert(table.end(), s.new_pages().begin(), s.new_pages().end());
        // Page groups: every page of a sequence is in the group its admission named.
        const int64_t group_pages = options.num_pages / options.page_groups;
        for (int32_t p : s.new_pages()) ASSERT_EQ(p / group_pages, groups.at(s.seq_id()));
        tokens += s.tokens_size();
        // Every position of the slice has a page.
        ASSERT_GE(static_cast<int64_t>(table.size()) * options.page_size,
                  s.start_pos() + s.tokens_size());
        ASSERT_EQ(s.want_logits(), slices[i].want_logits);
      }
      ASSERT_LE(tokens, options.max_batch_tokens);
      // Pages of live sequences are distinct, in range, and with the free ones make the pool.
      int64_t held = 0;
      for (const auto& [id, table] : tables) {
        for (int32_t p : table) {
          ASSERT_TRUE(used.insert(p).second) << "page " << p << " held twice";
          ASSERT_GE(p, 0);
          ASSERT_LT(p, options.num_pages);
          ++held;
        }
      }
      ASSERT_EQ(held + scheduler.free_pages(), options.num_pages);
      scheduler.Computed(slices);
      for (const ScheduledSeq& s : slices) {
        if (!s.want_logits) continue;
        s.seq->tokens.push_back(static_cast<int32_t>(s.seq->tokens.size() % 5));
        if (s.seq->generated() >= target_new[s.seq->request_index]) {
          auto done = scheduler.Finish(s.seq);
          ASSERT_EQ(done->generated(), target_new[done->request_index]);
          ++finished;
        }
      }
    }
  }
};

// `requests` random requests of up to 60 tokens through pools that each hold one of them and
// 3 pages more (`groups` of them: data-parallel attention's pool per rank): every request
// finishes, every page returns, and the budget forces preemptions.
void RunTightWorkload(uint64_t seed, int64_t groups, int64_t page_size, int64_t max_batch,
                      int64_t requests) {
  SCOPED_TRACE(absl::StrCat("seed ", seed, ", ", groups, " groups, page size ", page_size));
  Rng rng(seed);
  Simulation sim;
  sim.options = {/*num_pages=*/0, page_size, max_batch, /*max_batch_tokens=*/13};
  const int64_t max_len = 60;
  sim.options.page_groups = groups;
  sim.options.num_pages = groups * ((max_len + page_size - 1) / page_size + 3);
  Scheduler scheduler(sim.options);
  for (int64_t i = 0; i < requests; ++i) {
    const int64_t prompt = 1 + static_cast<int64_t>(rng.Uniform() * 40);
    sim.target_new.push_back(1 + static_cast<int64_t>(rng.Uniform() * (max_len - prompt)));
    scheduler.Enqueue(MakeSeq(i, prompt));
  }
  sim.Run(scheduler);
  EXPECT_EQ(sim.finished, requests);
  EXPECT_TRUE(scheduler.Idle());
  EXPECT_EQ(scheduler.free_pages(), sim.options.num_pages);
  EXPECT_GT(scheduler.total_preemptions(), 0) << "budget meant to force preemption";
}

TEST(SchedulerTest, EveryRequestFinishesAndEveryPageReturns) {
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t page_size : {1, 3, 16}) {
      RunTightWorkload(seed, /*groups=*/1, page_size, /*max_batch=*/4, /*requests=*/20);
    }
  }
}

TEST(SchedulerTest, PageGroupsKeepEachSequenceInOneGroup) {
  // Every page of a sequence in the group its admission named: checked by Simulation::Run.
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t groups : {2, 3}) {
      for (int64_t page_size : {1, 3, 16}) {
        RunTightWorkload(seed, groups, page_size, /*max_batch=*/6, /*requests=*/30);
      }
    }
  }
}

TEST(SchedulerTest, PageGroupsAdmitIntoTheFreerGroup) {
  SchedulerOptions options{/*num_pages=*/20, /*page_size=*/1, /*max_batch=*/8,
                           /*max_batch_tokens=*/100};
  options.page_groups = 2;  // pages 0-9 and 10-19
  Scheduler scheduler(options);
  scheduler.Enqueue(MakeSeq(0, 6));
  scheduler.Enqueue(MakeSeq(1, 3));
  scheduler.Enqueue(MakeSeq(2, 2));
  StepPlan plan;
  auto slices = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(plan.seqs_size(), 3);
  // 10/10 free: group 0; then 4/10: group 1; then 4/7: group 1 again.
  EXPECT_EQ(plan.seqs(0).page_group(), 0);
  EXPECT_EQ(plan.seqs(1).page_group(), 1);
  EXPECT_EQ(plan.seqs(2).page_group(), 1);
  EXPECT_EQ(plan.seqs(1).new_pages(0), 10);
  EXPECT_EQ(scheduler.free_pages(), 20 - 11);
}

TEST(SchedulerTest, ChunkedPrefillWantsLogitsOnlyAtTheEnd) {
  Scheduler scheduler(
      {/*num_pages=*/100, /*page_size=*/4, /*max_batch=*/8, /*max_batch_tokens=*/5});
  scheduler.Enqueue(MakeSeq(0, 12));
  std::vector<std::pair<int64_t, bool>> seen;
  for (int step = 0; step < 3; ++step) {
    StepPlan plan;
    auto slices = ScheduleStep(scheduler, &plan);
    ASSERT_EQ(slices.size(), 1u);
    seen.emplace_back(slices[0].count, slices[0].want_logits);
    scheduler.Computed(slices);
  }
  EXPECT_EQ(seen, (std::vector<std::pair<int64_t, bool>>{{5, false}, {5, false}, {2, true}}));
}

TEST(SchedulerTest, RunningFirstThenFifoAdmissionsUpToMaxBatch) {
  Scheduler scheduler(
      {/*num_pages=*/100, /*page_size=*/4, /*max_batch=*/2, /*max_batch_tokens=*/100});
  for (int64_t i = 0; i < 3; ++i) scheduler.Enqueue(MakeSeq(i, 3));
  StepPlan plan;
  auto first = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(first.size(), 2u);  // max_batch
  EXPECT_EQ(first[0].seq->request_index, 0);
  EXPECT_EQ(first[1].seq->request_index, 1);
  scheduler.Computed(first);
  for (auto& s : first) s.seq->tokens.push_back(1);
  scheduler.Finish(first[0].seq);
  auto second = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0].seq->request_index, 1);  // running first, one decode token
  EXPECT_EQ(second[0].count, 1);
  EXPECT_EQ(second[1].seq->request_index, 2);  // then the admission
  EXPECT_EQ(second[1].count, 3);
  ASSERT_EQ(plan.released_size(), 1);  // request 0's block table is dropped
}

TEST(SchedulerTest, PreemptsTheNewestAndRecomputesIt) {
  // 4 pages of 2 tokens: two sequences of 3 tokens take 2 pages each; growing
  // the first past 4 tokens needs a fifth page, so the newest is preempted.
  Scheduler scheduler(
      {/*num_pages=*/4, /*page_size=*/2, /*max_batch=*/4, /*max_batch_tokens=*/100});
  scheduler.Enqueue(MakeSeq(0, 3));
  scheduler.Enqueue(MakeSeq(1, 3));
  StepPlan plan;
  auto step = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(step.size(), 2u);
  scheduler.Computed(step);
  for (auto& s : step) s.seq->tokens.push_back(1);  // both now 4 tokens: still 2 pages each
  step = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(step.size(), 2u);
  scheduler.Computed(step);
  for (auto& s : step) s.seq->tokens.push_back(1);  // 5 tokens: the oldest needs page 3
  Sequence* newest = step[1].seq;
  step = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(step.size(), 1u);
  EXPECT_EQ(step[0].seq->request_index, 0);
  EXPECT_EQ(scheduler.total_preemptions(), 1);
  EXPECT_EQ(newest->num_computed, 0);
  EXPECT_TRUE(newest->pages.empty());
  EXPECT_EQ(plan.released_size(), 1);
}

// A cancelled request leaves wherever it is: running (its pages free at once, its admission
// released in the next plan) or waiting; an unknown one is no-op.
TEST(SchedulerTest, RemoveTakesRunningAndWaitingSequences) {
  Scheduler scheduler({/*num_pages=*/4, /*page_size=*/2, /*max_batch=*/1, /*max_batch_tokens=*/100});
  scheduler.Enqueue(MakeSeq(0, 3));
  scheduler.Enqueue(MakeSeq(1, 3));
  StepPlan plan;
  auto step = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(step.size(), 1u);  // max_batch 1: request 1 waits
  scheduler.Computed(step);
  const int64_t admitted = step[0].seq->seq_id;
  EXPECT_EQ(scheduler.free_pages(), 2);
  EXPECT_EQ(scheduler.waiting(), 1);
  auto waiting = scheduler.Remove(1);
  ASSERT_NE(waiting, nullptr);
  EXPECT_EQ(waiting->request_index, 1);
  EXPECT_EQ(scheduler.waiting(), 0);
  auto running = scheduler.Remove(0);
  ASSERT_NE(running, nullptr);
  EXPECT_EQ(scheduler.free_pages(), 4);
  EXPECT_TRUE(scheduler.Idle());
  EXPECT_EQ(scheduler.Remove(0), nullptr);
  EXPECT_EQ(scheduler.Remove(7), nullptr);
  scheduler.Enqueue(MakeSeq(2, 1));
  step = ScheduleStep(scheduler, &plan);
  ASSERT_EQ(plan.released_size(), 1);  // the removed admission, dropped by the workers
  EXPECT_EQ(plan.released(0), admitted);
}

// Prefix cache: a simulated cache checks that every row a step reads holds what the
// sequence's own tokens would put there, and that no step writes a row another live sequence
// can read. Prompts share prefixes of several lengths (a page boundary or not), some repeat
// exactly, and the pool is tight, so cached pages are shared, evicted and taken again.
TEST(SchedulerTest, PrefixCacheSharesOnlyRowsOfTheSameTokens) {
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t page_size : {1, 3, 16}) {
      Rng rng(seed);
      SchedulerOptions options{/*num_pages=*/0, page_size, /*max_batch=*/4,
                               /*max_batch_tokens=*/13, /*prefix_cache=*/true};
      const int64_t max_len = 70;
      options.num_pages = (max_len + page_size - 1) / page_size + 2;
      Scheduler scheduler(options);
      std::vector<int32_t> common;
      for (int i = 0; i < 40; ++i) common.push_back(static_cast<int32_t>(rng.Uniform() * 9));
      std::vector<int64_t> target_new;
      for (int64_t i = 0; i < 30; ++i) {
        auto seq = std::make_unique<Sequence>();
        seq->request_index = i;
        const int64_t shared = static_cast<int64_t>(rng.Uniform() * 41);
        seq->tokens.assign(common.begin(), common.begin() + shared);
        const int64_t own = 1 + static_cast<int64_t>(rng.Uniform() * 10);
        for (int64_t k = 0; k < own; ++k) seq->tokens.push_back(static_cast<int32_t>(i % 4));
        seq->prompt_len = static_cast<int64_t>(seq->tokens.size());
        target_new.push_back(1 + static_cast<int64_t>(rng.Uniform() * 15));
        scheduler.Enqueue(std::move(seq));
      }
      // Row (page, offset) holds the tokens up to its position, as the model would write them.
      std::map<std::pair<int32_t, int64_t>, std::vector<int32_t>> rows;
      std::map<int64_t, std::vector<int32_t>> tables;
      int64_t finished = 0;
      for (int64_t step = 0; !scheduler.Idle(); ++step) {
        ASSERT_LT(step, 100000);
        StepPlan plan;
        auto slices = ScheduleStep(scheduler, &plan);
        ASSERT_FALSE(slices.empty());
        for (int64_t id : plan.released()) ASSERT_EQ(tables.erase(id), 1u);
        for (const SeqStep& s : plan.seqs()) {
          auto& table = tables[s.seq_id()];
          table.insert(table.end(), s.new_pages().begin(), s.new_pages().end());
        }
        std::map<int32_t, int> holders;
        for (const auto& [id, table] : tables) {
          for (int32_t p : table) ++holders[p];
        }
        EXPECT_EQ(static_cast<int64_t>(holders.size()) + scheduler.free_pages(), options.num_pages);
        for (size_t i = 0; i < slices.size(); ++i) {
          const Sequence& seq = *slices[i].seq;
          const auto& table = tables.at(plan.seqs(static_cast<int>(i)).seq_id());
          for (int64_t pos = 0; pos < slices[i].start_pos; ++pos) {
            const auto row = rows.find({table[pos / page_size], pos % page_size});
            ASSERT_NE(row, rows.end()) << "position " << pos << " read before written";
            ASSERT_TRUE(std::equal(row->second.begin(), row->second.end(), seq.tokens.begin()) &&
                        static_cast<int64_t>(row->second.size()) == pos + 1)
                << "position " << pos << " holds another prefix";
          }
          for (int64_t pos = slices[i].start_pos; pos < slices[i].start_pos + slices[i].count;
               ++pos) {
            const int32_t page = table[pos / page_size];
            ASSERT_EQ(holders[page], 1) << "a shared page is written";
            rows[{page, pos % page_size}].assign(seq.tokens.begin(), seq.tokens.begin() + pos + 1);
          }
        }
        scheduler.Computed(slices);
        for (const ScheduledSeq& s : slices) {
          if (!s.want_logits) continue;
          s.seq->tokens.push_back(static_cast<int32_t>(s.seq->tokens.size() % 3));
          if (s.seq->generated() >= target_new[s.seq->request_index]) {
            scheduler.Finish(s.seq);
            ++finished;
          }
        }
      }
      EXPECT_EQ(finished, 30);
      EXPECT_EQ(scheduler.free_pages(), options.num_pages);
      EXPECT_GT(scheduler.prefix_hit_tokens(), 0);
      EXPECT_GT(scheduler.total_preemptions(), 0) << "budget meant to force preemption";
    }
  }
}

// The exact pages: a second request with the same first 35 tokens takes the first's two full
// pages of 16 and starts at position 32; its last token is computed even when the whole prompt
// is cached; evicted pages are those released longest ago, the later pages of a prefix first.
TEST(SchedulerTest, PrefixCacheTakesFullPagesAndEvictsTheOldest) {
  Scheduler scheduler({/*num_pages=*/6, /*page_size=*/16, /*max_batch=*/4,
                       /*max_batch_tokens=*/100, /*prefix_cache=*/true});
  auto run_alone = [&](std::unique_ptr<Sequence> seq) {
    scheduler.Enqueue(std::move(seq));
    StepPlan plan;
    auto slices = ScheduleStep(scheduler, &plan);
    EXPECT_EQ(slices.size(), 1u);
    scheduler.Computed(slices);
    std::vector<int32_t> pages(plan.seqs(0).new_pages().begin(), plan.seqs(0).new_pages().end());
    const int64_t start = slices[0].start_pos;
    scheduler.Finish(slices[0].seq);
    return std::make_pair(start, pages);
  };
  auto make = [](int64_t index, int64_t len, int32_t tail) {
    auto seq = MakeSeq(index, len);
    seq->tokens.back() = tail;
    return seq;
  };
  const auto a = run_alone(make(0, 40, 100));  // pages 0, 1, 2; 0 and 1 full
  EXPECT_EQ(a.first, 0);
  EXPECT_EQ(a.second, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(scheduler.cached_pages(), 2);
  const auto b = run_alone(make(1, 35, 101));
  EXPECT_EQ(b.first, 32);
  EXPECT_EQ(b.second, (std::vector<int32_t>{0, 1, 2}));  // page 2 was free again
  const auto c = run_alone(make(2, 32, 102));  // whole pages, but the last token is computed
  EXPECT_EQ(c.first, 16);
  EXPECT_EQ(c.second[0], 0);
  EXPECT_EQ(scheduler.prefix_hit_tokens(), 32 + 16);
  EXPECT_EQ(scheduler.free_pages(), 6);
  // Six pages with no prefix in common: the cached ones go, page 1 (the later) before page 0.
  auto other = MakeSeq(3, 96);
  for (int32_t& t : other->tokens) t += 50;
  const auto d = run_alone(std::move(other));
  EXPECT_EQ(d.first, 0);
  EXPECT_EQ(d.second.size(), 6u);
  EXPECT_EQ(scheduler.free_pages(), 6);
  const auto e = run_alone(make(4, 40, 103));
  EXPECT_EQ(e.first, 0) << "the first prefix was evicted";
}

}  // namespace
}  // namespace shardlm
