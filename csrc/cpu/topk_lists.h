// Bounded per-centroid candidate lists: the K best (score desc, index asc) seen so far.
// ATen-free. One instance per thread; merged at the end of a scan.
//
// Each list is a reservoir of 2K slots with a threshold: candidates at or above the
// threshold are appended; when the reservoir is full, nth_element keeps the best K and the
// threshold rises to the K-th score. Appends are sequential writes (cache friendly, unlike
// a heap of K entries per centroid), and each compaction is O(K) for K appends.
//
// While rows arrive in ascending index order (one thread walking its range of tiles), a
// later row that ties the K-th score loses the tie, so the threshold can sit just above it:
// exact ties (duplicates, quantised features) then cost nothing. If a range starts below
// rows already seen, the threshold falls back to the K-th score itself.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
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

inline bool candidate_before(const Candidate& a, const Candidate& b) {
  return ranks_before(a.score, a.index, b.score, b.index);
}

class TopKLists {
 public:
  // `floor` (k scores, or null): only scores strictly above floor[j] may enter list j,
  // e.g. the K-th best of earlier chunks, which no later row can displace on a tie.
  TopKLists(int64_t k, int64_t K, const float* floor = nullptr)
      : K_(K),
        size_(k, 0),
        // Not value-initialised: a deep K (crowded centroids) then costs only the pages
        // its candidates touch, not 2K zeroed slots per centroid and thread.
        slots_(new Candidate[static_cast<size_t>(k) * 2 * K]),
        threshold_(k),
        kth_(k) {
    for (int64_t j = 0; j < k; ++j) {  // -FLT_MAX without a floor: -inf and NaN never enter
      threshold_[j] = K == 0 ? NAN : floor ? std::nextafter(floor[j], INFINITY) : -FLT_MAX;
      kth_[j] = threshold_[j];
    }
  }

  // Rows [begin, end) follow; call before offering them.
  void begin_rows(int64_t begin, int64_t end) {
    if (begin < next_row_ && ascending_) {
      ascending_ = false;
      for (size_t j = 0; j < threshold_.size(); ++j) threshold_[j] = std::min(threshold_[j], kth_[j]);
    }
    next_row_ = std::max(next_row_, end);
  }

  // Scores below threshold(j) cannot enter list j; callers compare with >= (NaN: never).
  const float* thresholds() const { return threshold_.data(); }

  void offer(int64_t j, float s, int64_t i) {
    if (!(s >= threshold_[j])) return;
    Candidate* r = slots_.get() + j * 2 * K_;
    r[size_[j]++] = {s, i};
    if (size_[j] == 2 * K_) compact(j);
  }

  // Appends list j's candidates (unordered, possibly more than K) to `out`.
  void append_to(int64_t j, std::vector<Candidate>& out) const {
    const Candidate* r = slots_.get() + j * 2 * K_;
    out.insert(out.end(), r, r + size_[j]);
  }

 private:
  void compact(int64_t j) {
    Candidate* r = slots_.get() + j * 2 * K_;
    std::nth_element(r, r + (K_ - 1), r + size_[j], candidate_before);
    kth_[j] = std::max(kth_[j], r[K_ - 1].score);  // the K-th best
    threshold_[j] = std::max(threshold_[j], ascending_ ? std::nextafter(kth_[j], INFINITY) : kth_[j]);
    size_[j] = K_;
  }

  int64_t K_;
  std::vector<int64_t> size_;
  std::unique_ptr<Candidate[]> slots_;
  std::vector<float> threshold_;
  std::vector<float> kth_;  // K-th best score so far (or the floor's minimum)
  int64_t next_row_ = 0;     // one past the largest row offered so far
  bool ascending_ = true;    // every range so far started after the previous ones
};

// One 64-bit key per candidate whose ascending order is (score desc, index asc): the
// score's bits made order-preserving and inverted above, the index below. Sorting keys
// is several times faster than sorting structs through a comparator, which matters when
// lists are deep (crowded centroids: tens of thousands of entries per centroid).
inline uint64_t rank_key(float s, int64_t i) {
  if (s == 0.0f) s = 0.0f;  // -0.0 ties with 0.0, as in ranks_before
  uint32_t u;
  std::memcpy(&u, &s, 4);
  const uint32_t ascending = u ^ ((u >> 31) ? 0xffffffffu : 0x80000000u);
  return (static_cast<uint64_t>(~ascending) << 32) | static_cast<uint32_t>(i);
}

inline float key_score(uint64_t key) {
  const uint32_t ascending = ~static_cast<uint32_t>(key >> 32);
  const uint32_t u = ascending ^ ((ascending >> 31) ? 0x80000000u : 0xffffffffu);
  float s;
  std::memcpy(&s, &u, 4);
  return s;
}

// Ascending sort of keys: LSD radix sort (11-bit digits, digits all keys share skipped)
// for long lists, std::sort for short ones.
inline void sort_keys(std::vector<uint64_t>& keys) {
  const size_t n = keys.size();
  if (n < 4096) {
    std::sort(keys.begin(), keys.end());
    return;
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::vector<uint64_t> tmp(n);
  std::vector<size_t> count(kBuckets);
  for (int shift = 0; shift < 64; shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (uint64_t k : keys) ++count[(k >> shift) & (kBuckets - 1)];
    if (count[(keys[0] >> shift) & (kBuckets - 1)] == n) continue;  // one digit: nothing to do
    size_t sum = 0;
    for (size_t& c : count) {
      const size_t here = c;
      c = sum;
      sum += here;
    }
    for (uint64_t k : keys) tmp[count[(k >> shift) & (kBuckets - 1)]++] = k;
    keys.swap(tmp);
  }
}

// Writes the K best of `all` (sorted) into out_score/out_index, padding with -inf / -1.
inline void write_best(std::vector<Candidate>& all, int64_t K, float* out_score, int64_t* out_index) {
  int64_t m = std::min<int64_t>(K, static_cast<int64_t>(all.size()));
  const bool small_indices = std::all_of(all.begin(), all.end(), [](const Candidate& c) {
    return c.index >= 0 && c.index <= static_cast<int64_t>(UINT32_MAX);
  });
  if (small_indices) {
    std::vector<uint64_t> keys(all.size());
    for (size_t t = 0; t < all.size(); ++t) keys[t] = rank_key(all[t].score, all[t].index);
    if (m > 0 && m < static_cast<int64_t>(keys.size()))
      std::nth_element(keys.begin(), keys.begin() + (m - 1), keys.end());
    keys.resize(m);
    sort_keys(keys);
    for (int64_t t = 0; t < m; ++t) {
      out_score[t] = key_score(keys[t]);
      out_index[t] = static_cast<int64_t>(keys[t] & 0xffffffffu);
    }
  } else {  // more than 2^32 rows in one call
    if (m > 0 && m < static_cast<int64_t>(all.size()))
      std::nth_element(all.begin(), all.begin() + (m - 1), all.end(), candidate_before);
    std::sort(all.begin(), all.begin() + m, candidate_before);
    for (int64_t t = 0; t < m; ++t) {
      out_score[t] = all[t].score;
      out_index[t] = all[t].index;
    }
  }
  for (int64_t t = m; t < K; ++t) {
    out_score[t] = -INFINITY;
    out_index[t] = -1;
  }
}

}  // namespace simcore::cpu
