#pragma once
// `cskit ping --udp` bookkeeping, without I/O: builds sequenced, timestamped
// probes that any RFC 862 echo server sends back unchanged, and classifies
// what comes back (reply, duplicate, out of order, corrupted, stray).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cskit::client {

/// Probe layout (all integers big-endian):
///   0..3   "CSKP"
///   4..7   session id (random per run: replies to an earlier run are strays)
///   8..15  sequence number, from 1
///   16..23 send time, CLOCK_REALTIME ns (only when the probe is >= 24 bytes)
///   24..   filler: byte i holds (i * 7 + seq) & 0xff
class udp_probes {
 public:
  static constexpr std::size_t min_size = 16;

  udp_probes(std::uint32_t session, std::size_t size);

  /// The bytes of probe `seq` (from 1, consecutive), sent at `send_real_ns`.
  std::vector<std::uint8_t> make(std::uint64_t seq, std::int64_t send_real_ns, std::int64_t send_mono_ns);

  enum class kind {
    reply,      ///< first answer to a probe
    duplicate,  ///< that probe was answered before
    corrupt,    ///< our header, but the bytes differ from what was sent
    stray,      ///< not one of this run's probes
  };
  struct result {
    kind what = kind::stray;
    std::uint64_t seq = 0;
    bool out_of_order = false;  ///< a later probe was answered first
    std::int64_t send_real_ns = 0;
    std::int64_t send_mono_ns = 0;
  };
  result classify(std::span<const std::uint8_t> datagram);

  std::uint64_t sent() const noexcept { return records_.size(); }
  bool answered(std::uint64_t seq) const noexcept { return seq >= 1 && seq <= records_.size() && records_[seq - 1].replies; }
  std::int64_t send_mono_ns(std::uint64_t seq) const noexcept { return records_[seq - 1].send_mono_ns; }
  std::uint64_t duplicates() const noexcept { return duplicates_; }
  std::uint64_t reordered() const noexcept { return reordered_; }
  std::uint64_t corrupted() const noexcept { return corrupted_; }

 private:
  struct record {
    std::int64_t send_real_ns = 0;
    std::int64_t send_mono_ns = 0;
    std::uint32_t replies = 0;
  };
  void fill(std::uint64_t seq, std::int64_t send_real_ns, std::span<std::uint8_t> out) const;

  std::uint32_t session_;
  std::size_t size_;
  std::vector<record> records_;
  std::uint64_t highest_answered_ = 0;
  std::uint64_t duplicates_ = 0, reordered_ = 0, corrupted_ = 0;
  std::vector<std::uint8_t> scratch_;
};

/// min/avg/max/mdev as ping(8) prints them (mdev: standard deviation).
struct rtt_summary {
  double min = 0, avg = 0, max = 0, mdev = 0;
  static rtt_summary of(const std::vector<double>& samples);
};

}  // namespace cskit::client
