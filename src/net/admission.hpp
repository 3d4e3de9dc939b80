#pragma once
// Connections that have not logged in yet (TLS handshake and login in
// progress), counted per source and in all, so that one host cannot hold
// every slot and keep others from logging in (docs/protocol.md,
// "Connection limits"). Thread-safe: slots are taken on the acceptor's loop
// and given back on the connections' loops.

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace cskit::net {

/// Where a connection comes from, as far as limits go: an IPv4 address, or
/// the /64 network of an IPv6 address (one host usually has a whole /64).
/// An IPv4-mapped IPv6 address counts as the IPv4 address.
struct source_key {
  std::array<std::uint8_t, 16> bytes{};
  bool operator==(const source_key&) const = default;
  /// From an address as text ("127.0.0.1", "2001:db8::1"); nullopt-like
  /// all-zero key for text that is not an address.
  static source_key of(const std::string& address);
  std::string describe() const;  ///< "127.0.0.1", "2001:db8:0:1::/64"
};

class admission {
 public:
  admission(std::size_t max_total, std::size_t max_per_source) : max_total_(max_total), max_per_source_(max_per_source) {}

  enum class verdict { admitted, source_full, total_full };

  /// A slot for one more connection from `k` that has not logged in.
  verdict acquire(const source_key& k);
  /// Gives a slot back (the connection logged in, or closed).
  void release(const source_key& k);

  /// New bounds (a configuration reload); slots already held stay held.
  void set_limits(std::size_t max_total, std::size_t max_per_source);

  std::size_t pending() const;
  std::size_t pending_from(const source_key& k) const;

 private:
  struct hash {
    std::size_t operator()(const source_key& k) const noexcept;
  };
  mutable std::mutex mutex_;
  std::size_t max_total_;       // guarded by mutex_
  std::size_t max_per_source_;  // guarded by mutex_
  std::size_t total_ = 0;
  std::unordered_map<source_key, std::size_t, hash> per_source_;
};

/// One connection's slot: given back once, when it logs in or is destroyed.
class admission_slot {
 public:
  admission_slot() = default;
  admission_slot(admission* a, source_key k) : admission_(a), key_(k) {}
  admission_slot(admission_slot&& o) noexcept : admission_(o.admission_), key_(o.key_) { o.admission_ = nullptr; }
  admission_slot& operator=(admission_slot&& o) noexcept {
    if (this != &o) {
      release();
      admission_ = o.admission_;
      key_ = o.key_;
      o.admission_ = nullptr;
    }
    return *this;
  }
  admission_slot(const admission_slot&) = delete;
  admission_slot& operator=(const admission_slot&) = delete;
  ~admission_slot() { release(); }
  void release() noexcept {
    if (admission_) admission_->release(key_);
    admission_ = nullptr;
  }

 private:
  admission* admission_ = nullptr;
  source_key key_;
};

}  // namespace cskit::net
