#include "util/delta.hpp"

#define XXH_INLINE_ALL
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <bit>
#include <memory>

#include "util/file_io.hpp"

namespace cskit::util::delta {

namespace {

// The gear table: splitmix64's outputs 1 to 256 (docs/protocol.md gives
// the formula, so that another implementation cuts at the same places).
constexpr std::uint64_t splitmix(std::uint64_t state) {
  std::uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
constexpr std::array<std::uint64_t, 256> make_gear() {
  std::array<std::uint64_t, 256> g{};
  for (std::uint64_t i = 0; i < 256; ++i) g[i] = splitmix((i + 1) * 0x9E3779B97F4A7C15ULL);
  return g;
}
constexpr std::array<std::uint64_t, 256> gear = make_gear();
// Two bytes a step: ((h << 1) + gear[a]) << 1) + gear[b] is
// (h << 2) + (gear[a] << 1) + gear[b], and the last two terms do not wait
// for h (the chain is half as long).
constexpr std::array<std::uint64_t, 256> make_gear_shifted() {
  std::array<std::uint64_t, 256> g{};
  for (std::size_t i = 0; i < 256; ++i) g[i] = gear[i] << 1;
  return g;
}
constexpr std::array<std::uint64_t, 256> gear_shifted = make_gear_shifted();

// The `bits` highest bits set: they depend on the last 64 bytes hashed.
constexpr std::uint64_t top_bits(unsigned bits) { return bits == 0 ? 0 : ~std::uint64_t{0} << (64 - bits); }

void put_be(std::string& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
std::uint64_t get_be(const char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void append_chunk_record(std::string& out, const chunk& c) {
  put_be(out, c.length, 4);
  put_be(out, c.hash, 8);
}

// Appends `o`, merged with the last step when it continues it.
void push(std::vector<op>& ops, op o) {
  if (o.length == 0) return;
  if (!ops.empty()) {
    op& last = ops.back();
    if (last.what == o.what && last.from + last.length == o.from) {
      last.length += o.length;
      return;
    }
  }
  ops.push_back(o);
}

}  // namespace

params params_with(unsigned avg_bits) noexcept {
  params p;
  p.avg_bits = avg_bits;
  p.avg = std::uint32_t{1} << avg_bits;
  p.min = p.avg / 4;
  p.max = p.avg * 4;
  return p;
}

params params_for(std::uint64_t size) noexcept {
  const unsigned bits = size <= 1 ? 0u : static_cast<unsigned>(std::bit_width(size - 1));  // ceil(log2(size))
  return params_with(std::clamp(bits > 16 ? bits - 16 : 0u, 14u, 22u));
}

chunker::chunker(params p)
    : p_(p), mask_small_(top_bits(p.avg_bits)), mask_large_(top_bits(p.avg_bits - 2)), state_(XXH3_createState()) {
  if (!state_) throw std::bad_alloc();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}

chunker::~chunker() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void chunker::cut(std::vector<chunk>& out) {
  auto* s = static_cast<XXH3_state_t*>(state_);
  out.push_back({offset_, len_, XXH3_64bits_digest(s)});
  offset_ += len_;
  len_ = 0;
  h_ = 0;
  XXH3_64bits_reset(s);
}

void chunker::feed(const void* data, std::size_t n, std::vector<chunk>& out) {
  const auto* d = static_cast<const unsigned char*>(data);
  auto* s = static_cast<XXH3_state_t*>(state_);
  std::size_t hashed = 0;  // bytes of `d` given to the chunk digest so far
  std::size_t i = 0;
  while (i < n) {
    if (len_ < p_.min) {  // never cut before `min`: not even looked at
      const std::size_t take = std::min<std::size_t>(n - i, p_.min - len_);
      i += take;
      len_ += static_cast<std::uint32_t>(take);
      continue;
    }
    // Normalised chunking: harder to cut before `avg`, easier after (one
    // bit more and one less than avg's; a bit less each again, as only
    // every second position is looked at).
    const bool before_avg = len_ < p_.avg;
    const std::uint64_t mask = before_avg ? mask_small_ : mask_large_;
    const std::size_t until = i + std::min<std::size_t>(n - i, (before_avg ? p_.avg : p_.max) - len_);
    // A cut is looked for where the chunk's length is even: two bytes a
    // step (a piece that ends between them leaves the length odd, and the
    // next piece's first byte makes it even again).
    std::uint64_t h = h_;
    std::size_t j = i;
    bool found = false;
    if ((len_ & 1) != 0) {
      h = (h << 1) + gear[d[j++]];
      found = (h & mask) == 0;
    }
    while (!found && j + 2 <= until) {
      h = (h << 2) + gear_shifted[d[j]] + gear[d[j + 1]];
      j += 2;
      found = (h & mask) == 0;
    }
    if (!found && j < until) h = (h << 1) + gear[d[j++]];  // the piece ends here: looked at with the next
    len_ += static_cast<std::uint32_t>(j - i);
    h_ = h;
    i = j;
    if (found || len_ == p_.max) {
      XXH3_64bits_update(s, d + hashed, i - hashed);
      hashed = i;
      cut(out);
    }
  }
  XXH3_64bits_update(s, d + hashed, n - hashed);
}

void chunker::finish(std::vector<chunk>& out) {
  if (len_ > 0) cut(out);
}

bool chunk_file(int fd, std::uint64_t size, params p, std::vector<chunk>& out, const reading& r) {
  constexpr std::size_t block = 8u << 20;
  std::unique_ptr<char[]> buf(new (std::nothrow) char[block]);
  if (!buf) return false;
  (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  chunker c(p);
  out.reserve(out.size() + static_cast<std::size_t>(std::min<std::uint64_t>(size / p.avg + 16, 1u << 20)));
  for (std::uint64_t at = 0; at < size;) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(block, size - at));
    const long n = read_full(fd, buf.get(), want, at);
    if (n != static_cast<long>(want)) return false;  // an error, or it shrank
    if (r.observe) r.observe(std::string_view(buf.get(), want));
    c.feed(buf.get(), want, out);
    at += want;
    if (at == size) c.finish(out);
    if (r.progress && !r.progress(at == size)) return false;
  }
  if (size == 0 && r.progress) r.progress(true);
  return true;
}

void basis_index::add(std::uint64_t hash, std::uint64_t bytes, std::uint64_t offset) {
  map_.emplace(hash, entry{bytes, offset});
}

std::optional<std::uint64_t> basis_index::find(std::uint64_t hash, std::uint64_t bytes) const {
  auto [lo, hi] = map_.equal_range(hash);
  for (auto it = lo; it != hi; ++it) {
    if (it->second.bytes == bytes) return it->second.offset;
  }
  return std::nullopt;
}

void grouper::close(std::vector<group>& out) {
  open_.hash = XXH3_64bits(records_.data(), records_.size());
  out.push_back(open_);
  records_.clear();
  open_.count = 0;
}

void grouper::add(const std::vector<chunk>& chunks, std::vector<group>& out) {
  constexpr std::size_t max_group = 256;
  for (; next_ < chunks.size(); ++next_) {
    const chunk& c = chunks[next_];
    if (open_.count == 0) open_ = {c.offset, 0, 0, next_, 0};
    append_chunk_record(records_, c);
    open_.bytes += c.length;
    ++open_.count;
    if (c.hash % 64 == 0 || open_.count == max_group) close(out);
  }
}

void grouper::finish(const std::vector<chunk>& chunks, std::vector<group>& out) {
  add(chunks, out);
  if (open_.count > 0) close(out);
}

std::vector<group> group_chunks(const std::vector<chunk>& chunks) {
  std::vector<group> groups;
  grouper g;
  g.finish(chunks, groups);
  return groups;
}

std::string encode_groups(const std::vector<group>& groups) {
  std::string out;
  out.reserve(groups.size() * group_record);
  for (const auto& g : groups) {
    put_be(out, g.bytes, 8);
    put_be(out, g.hash, 8);
  }
  return out;
}

bool decode_more_groups(std::string_view body, std::uint64_t size, bool last, std::vector<group>& groups) {
  if (body.size() % group_record != 0) return false;
  std::uint64_t offset = groups.empty() ? 0 : groups.back().offset + groups.back().bytes;
  groups.reserve(groups.size() + body.size() / group_record);
  for (std::size_t at = 0; at < body.size(); at += group_record) {
    group g;
    g.offset = offset;
    g.bytes = get_be(body.data() + at, 8);
    g.hash = get_be(body.data() + at + 8, 8);
    if (g.bytes == 0 || offset > size || g.bytes > size - offset) return false;
    offset += g.bytes;
    groups.push_back(g);
  }
  return !last || offset == size;
}

std::optional<std::vector<group>> decode_groups(std::string_view body, std::uint64_t size) {
  std::vector<group> groups;
  if (!decode_more_groups(body, size, true, groups)) return std::nullopt;
  return groups;
}

std::string encode_chunks(const std::vector<chunk>& chunks, const std::vector<group>& groups,
                          const std::vector<std::uint32_t>& which) {
  std::string out;
  for (auto w : which) {
    const group& g = groups.at(w);
    for (std::size_t i = g.first; i < g.first + g.count; ++i) append_chunk_record(out, chunks.at(i));
  }
  return out;
}

std::optional<std::vector<chunk>> decode_chunks(std::string_view body, const std::vector<group>& groups,
                                                const std::vector<std::uint32_t>& which) {
  if (body.size() % chunk_record != 0) return std::nullopt;
  std::vector<chunk> out;
  out.reserve(body.size() / chunk_record);
  std::size_t at = 0;
  for (auto w : which) {
    if (w >= groups.size()) return std::nullopt;
    const group& g = groups[w];
    std::uint64_t got = 0;
    while (got < g.bytes) {
      if (at == body.size()) return std::nullopt;
      chunk c;
      c.length = static_cast<std::uint32_t>(get_be(body.data() + at, 4));
      c.hash = get_be(body.data() + at + 4, 8);
      at += chunk_record;
      if (c.length == 0 || c.length > g.bytes - got) return std::nullopt;
      c.offset = g.offset + got;
      got += c.length;
      out.push_back(c);
    }
  }
  if (at != body.size()) return std::nullopt;
  return out;
}

std::string encode_indices(const std::vector<std::uint32_t>& which) {
  std::string out;
  out.reserve(which.size() * 4);
  for (auto w : which) put_be(out, w, 4);
  return out;
}

std::optional<std::vector<std::uint32_t>> decode_indices(std::string_view body, std::size_t count) {
  if (body.size() % 4 != 0) return std::nullopt;
  std::vector<std::uint32_t> out;
  out.reserve(body.size() / 4);
  for (std::size_t at = 0; at < body.size(); at += 4) {
    const auto v = static_cast<std::uint32_t>(get_be(body.data() + at, 4));
    if (v >= count || (!out.empty() && v <= out.back())) return std::nullopt;
    out.push_back(v);
  }
  return out;
}

std::vector<std::uint32_t> unmatched_groups(const std::vector<group>& source, const std::vector<group>& basis) {
  basis_index ours;
  for (const auto& g : source) ours.add(g.hash, g.bytes, g.offset);
  std::vector<std::uint32_t> out;
  for (std::size_t i = 0; i < basis.size(); ++i) {
    if (!ours.find(basis[i].hash, basis[i].bytes)) out.push_back(static_cast<std::uint32_t>(i));
  }
  return out;
}

std::vector<op> plan_ops(const std::vector<chunk>& source, const std::vector<group>& source_groups,
                         const std::vector<group>& basis_groups, const std::vector<chunk>& basis_chunks) {
  basis_index whole, single;
  for (const auto& g : basis_groups) whole.add(g.hash, g.bytes, g.offset);
  for (const auto& c : basis_chunks) single.add(c.hash, c.length, c.offset);
  std::vector<op> ops;
  for (const auto& g : source_groups) {
    if (auto at = whole.find(g.hash, g.bytes)) {
      push(ops, {op::copy, *at, g.bytes});
      continue;
    }
    for (std::size_t i = g.first; i < g.first + g.count; ++i) {
      const chunk& c = source[i];
      if (auto at = single.find(c.hash, c.length)) {
        push(ops, {op::copy, *at, c.length});
      } else {
        push(ops, {op::literal, c.offset, c.length});
      }
    }
  }
  return ops;
}

std::vector<op> plan_fetch(const std::vector<group>& source_groups, const std::vector<std::uint32_t>& wanted,
                           const std::vector<chunk>& source_chunks, const std::vector<chunk>& basis,
                           const std::vector<group>& basis_groups) {
  basis_index whole, single;
  for (const auto& g : basis_groups) whole.add(g.hash, g.bytes, g.offset);
  for (const auto& c : basis) single.add(c.hash, c.length, c.offset);
  std::vector<op> ops;
  std::size_t next_wanted = 0, next_chunk = 0;
  for (std::size_t i = 0; i < source_groups.size(); ++i) {
    const group& g = source_groups[i];
    const bool listed = next_wanted < wanted.size() && wanted[next_wanted] == i;
    next_wanted += listed ? 1 : 0;
    const auto at_whole = whole.find(g.hash, g.bytes);
    if (at_whole) {
      push(ops, {op::copy, *at_whole, g.bytes});
    } else if (!listed) {
      push(ops, {op::literal, g.offset, g.bytes});  // its chunks were not asked for
    }
    if (!listed) continue;
    // The group's chunks (decode_chunks made them add up to its size).
    for (std::uint64_t got = 0; got < g.bytes && next_chunk < source_chunks.size(); ++next_chunk) {
      const chunk& c = source_chunks[next_chunk];
      got += c.length;
      if (at_whole) continue;  // (asked for, yet the basis had it whole)
      if (auto at = single.find(c.hash, c.length)) {
        push(ops, {op::copy, *at, c.length});
      } else {
        push(ops, {op::literal, c.offset, c.length});
      }
    }
  }
  return ops;
}

std::string encode_ranges(const std::vector<range>& ranges) {
  std::string out;
  out.reserve(ranges.size() * range_record);
  for (const auto& r : ranges) {
    put_be(out, r.offset, 8);
    put_be(out, r.length, 8);
  }
  return out;
}

std::optional<std::vector<range>> decode_ranges(std::string_view body, std::uint64_t size) {
  if (body.size() % range_record != 0) return std::nullopt;
  std::vector<range> out;
  out.reserve(body.size() / range_record);
  std::uint64_t end = 0;
  for (std::size_t at = 0; at < body.size(); at += range_record) {
    range r{get_be(body.data() + at, 8), get_be(body.data() + at + 8, 8)};
    if (r.length == 0 || r.offset < end || r.offset > size || r.length > size - r.offset) return std::nullopt;
    end = r.offset + r.length;
    out.push_back(r);
  }
  return out;
}

std::uint64_t copied_bytes(const std::vector<op>& ops) noexcept {
  std::uint64_t n = 0;
  for (const auto& o : ops) {
    if (o.what == op::copy) n += o.length;
  }
  return n;
}

}  // namespace cskit::util::delta
