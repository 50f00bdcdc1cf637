// Bounded per-centroid candidate lists: the K best (score desc, index asc) seen so far.
// ATen-free. One instance per thread; merged at the end of a scan.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

namespace simcore::cpu {

struct Candidate {
  float score;
  int64_t index;
};

// a ranks before b: higher score, ties to the smaller index.
inline bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

class TopKLists {
 public:
  TopKLists(int64_t k, int64_t K)
      : K_(K), size_(k, 0), score_(k * K), index_(k * K), threshold_(k, K > 0 ? -FLT_MAX : NAN) {}

  // Scores below threshold(j) cannot enter list j. -FLT_MAX while the list is not
  // full, so that -inf and NaN never enter (callers compare with >=); NaN when K == 0.
  const float* thresholds() const { return threshold_.data(); }

  void offer(int64_t j, float s, int64_t i) {
    float* v = score_.data() + j * K_;
    int64_t* x = index_.data() + j * K_;
    int64_t n = size_[j];
    if (n < K_) {
      if (!(s >= -FLT_MAX)) return;  // -inf, NaN
      // Sift up: the root holds the worst entry.
      int64_t c = n;
      while (c > 0) {
        int64_t p = (c - 1) >> 1;
        if (!ranks_before(v[p], x[p], s, i)) break;
        v[c] = v[p];
        x[c] = x[p];
        c = p;
      }
      v[c] = s;
      x[c] = i;
      size_[j] = ++n;
      if (n == K_) threshold_[j] = v[0];
      return;
    }
    if (!ranks_before(s, i, v[0], x[0])) return;
    int64_t c = 0;
    for (;;) {
      int64_t l = 2 * c + 1;
      if (l >= K_) break;
      int64_t r = l + 1;
      int64_t m = (r < K_ && ranks_before(v[l], x[l], v[r], x[r])) ? r : l;  // the worse child
      if (!ranks_before(s, i, v[m], x[m])) break;
      v[c] = v[m];
      x[c] = x[m];
      c = m;
    }
    v[c] = s;
    x[c] = i;
    threshold_[j] = v[0];
  }

  void append_to(int64_t j, std::vector<Candidate>& out) const {
    const float* v = score_.data() + j * K_;
    const int64_t* x = index_.data() + j * K_;
    for (int64_t t = 0; t < size_[j]; ++t) out.push_back({v[t], x[t]});
  }

 private:
  int64_t K_;
  std::vector<int64_t> size_;
  std::vector<float> score_;
  std::vector<int64_t> index_;
  std::vector<float> threshold_;
};

// Writes the K best of `all` (sorted) into out_score/out_index, padding with -inf / -1.
inline void write_best(std::vector<Candidate>& all, int64_t K, float* out_score, int64_t* out_index) {
  auto before = [](const Candidate& a, const Candidate& b) {
    return ranks_before(a.score, a.index, b.score, b.index);
  };
  int64_t m = std::min<int64_t>(K, static_cast<int64_t>(all.size()));
  std::partial_sort(all.begin(), all.begin() + m, all.end(), before);
  for (int64_t t = 0; t < K; ++t) {
    out_score[t] = t < m ? all[t].score : -INFINITY;
    out_index[t] = t < m ? all[t].index : -1;
  }
}

}  // namespace simcore::cpu
