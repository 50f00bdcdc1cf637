// Randomised check of csrc/cpu/topk_lists.h against a full sort, with the kernel's
// filter (offer only scores >= thresholds()[j]), heavy ties, floors, and row ranges that
// arrive in ascending or in shuffled order. Prints "ok" or the first mismatch.
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "topk_lists.h"

using simcore::cpu::Candidate;
using simcore::cpu::TopKLists;

int main() {
  std::mt19937_64 rng(12345);
  for (int trial = 0; trial < 3000; ++trial) {
    const int64_t k = 1 + rng() % 4, K = rng() % 40, n = rng() % 600, range = 1 + rng() % 70;
    const bool shuffled = rng() % 2, with_floor = rng() % 3 == 0;
    const int levels = 1 + rng() % 30;  // few levels: many exact ties
    std::vector<float> score(k * n);
    for (auto& s : score) s = static_cast<float>(static_cast<int>(rng() % levels)) - levels / 2;
    std::vector<float> floor(k);
    for (auto& f : floor) f = static_cast<float>(static_cast<int>(rng() % levels)) - levels / 2 - 1;
    TopKLists lists(k, K, with_floor ? floor.data() : nullptr);
    std::vector<int64_t> starts;
    for (int64_t a = 0; a < n; a += range) starts.push_back(a);
    if (shuffled) std::shuffle(starts.begin(), starts.end(), rng);
    for (int64_t a : starts) {
      const int64_t b = std::min(n, a + range);
      lists.begin_rows(a, b);
      for (int64_t i = a; i < b; ++i)
        for (int64_t j = 0; j < k; ++j)
          if (score[j * n + i] >= lists.thresholds()[j]) lists.offer(j, score[j * n + i], i);
    }
    for (int64_t j = 0; j < k; ++j) {
      std::vector<Candidate> all, want;
      lists.append_to(j, all);
      std::vector<float> got_s(K);
      std::vector<int64_t> got_i(K);
      simcore::cpu::write_best(all, K, got_s.data(), got_i.data());
      for (int64_t i = 0; i < n; ++i) {
        const float s = score[j * n + i];
        if (!with_floor || s > floor[j]) want.push_back({s, i});
      }
      std::sort(want.begin(), want.end(), simcore::cpu::candidate_before);
      for (int64_t t = 0; t < K; ++t) {
        const bool present = t < static_cast<int64_t>(want.size());
        const int64_t wi = present ? want[t].index : -1;
        if (got_i[t] != wi || (present && got_s[t] != want[t].score)) {
          std::printf("trial %d centroid %ld slot %ld: got (%g, %ld) want (%g, %ld) [K=%ld n=%ld shuffled=%d]\n",
                      trial, (long)j, (long)t, got_s[t], (long)got_i[t], present ? want[t].score : 0.0,
                      (long)wi, (long)K, (long)n, (int)shuffled);
          return 1;
        }
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
