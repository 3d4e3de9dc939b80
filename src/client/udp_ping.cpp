#include "client/udp_ping.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace cskit::client {
namespace {
void put_be(std::uint8_t* p, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i, v >>= 8) p[i] = static_cast<std::uint8_t>(v);
}
std::uint64_t get_be(const std::uint8_t* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | p[i];
  return v;
}
}  // namespace

udp_probes::udp_probes(std::uint32_t session, std::size_t size)
    : session_(session), size_(std::max(size, min_size)), scratch_(size_) {}

void udp_probes::fill(std::uint64_t seq, std::int64_t send_real_ns, std::span<std::uint8_t> out) const {
  std::memcpy(out.data(), "CSKP", 4);
  put_be(&out[4], session_, 4);
  put_be(&out[8], seq, 8);
  if (out.size() >= 24) put_be(&out[16], static_cast<std::uint64_t>(send_real_ns), 8);
  for (std::size_t i = 24; i < out.size(); ++i) out[i] = static_cast<std::uint8_t>((i * 7 + seq) & 0xff);
}

std::vector<std::uint8_t> udp_probes::make(std::uint64_t seq, std::int64_t send_real_ns, std::int64_t send_mono_ns) {
  std::vector<std::uint8_t> out(size_);
  fill(seq, send_real_ns, out);
  if (seq == records_.size() + 1) records_.push_back({send_real_ns, send_mono_ns, 0});
  return out;
}

udp_probes::result udp_probes::classify(std::span<const std::uint8_t> d) {
  result r;
  if (d.size() < min_size || std::memcmp(d.data(), "CSKP", 4) != 0 || get_be(&d[4], 4) != session_) return r;
  const std::uint64_t seq = get_be(&d[8], 8);
  if (seq == 0 || seq > records_.size()) return r;
  auto& rec = records_[seq - 1];
  r.seq = seq;
  r.send_real_ns = rec.send_real_ns;
  r.send_mono_ns = rec.send_mono_ns;
  fill(seq, rec.send_real_ns, scratch_);
  if (d.size() != size_ || std::memcmp(d.data(), scratch_.data(), size_) != 0) {
    ++corrupted_;
    r.what = kind::corrupt;
    return r;
  }
  if (rec.replies++ > 0) {
    ++duplicates_;
    r.what = kind::duplicate;
    return r;
  }
  r.what = kind::reply;
  if (seq < highest_answered_) {
    r.out_of_order = true;
    ++reordered_;
  }
  highest_answered_ = std::max(highest_answered_, seq);
  return r;
}

rtt_summary rtt_summary::of(const std::vector<double>& v) {
  rtt_summary s;
  if (v.empty()) return s;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  double sum = 0, sq = 0;
  for (double x : v) sum += x, sq += x * x;
  const auto n = static_cast<double>(v.size());
  s.avg = sum / n;
  s.mdev = std::sqrt(std::max(0.0, sq / n - s.avg * s.avg));
  return s;
}

}  // namespace cskit::client
