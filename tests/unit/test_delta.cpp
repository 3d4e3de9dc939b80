// Delta transfer's pure parts: chunking, signatures on the wire, the plan.
#include "util/delta.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "util/file_io.hpp"

using namespace cskit::util;
using namespace cskit::util::delta;

namespace {

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& ch : s) ch = static_cast<char>(rng() & 0xFF);
  return s;
}

std::vector<chunk> chunks_of(const std::string& data, params p, std::size_t piece = 0) {
  chunker c(p);
  std::vector<chunk> out;
  if (piece == 0) piece = data.size() ? data.size() : 1;
  for (std::size_t at = 0; at < data.size(); at += piece) c.feed(data.data() + at, std::min(piece, data.size() - at), out);
  c.finish(out);
  return out;
}

// What the receiver does with the steps.
std::string rebuild(const std::vector<op>& ops, const std::string& basis, const std::string& source) {
  std::string out;
  for (const auto& o : ops) out += (o.what == op::copy ? basis : source).substr(o.from, o.length);
  return out;
}

// Both sides, through the wire encodings, as put does it.
struct exchange {
  std::vector<op> ops;
  std::size_t signature_bytes = 0;  // what the receiver sent about its basis
};
exchange delta_between(const std::string& basis, const std::string& source, params p) {
  const auto bchunks = chunks_of(basis, p);
  const auto bgroups = group_chunks(bchunks);
  const auto schunks = chunks_of(source, p);
  const auto sgroups = group_chunks(schunks);
  const std::string groups_wire = encode_groups(bgroups);
  auto got_groups = decode_groups(groups_wire, basis.size());
  EXPECT_TRUE(got_groups);
  const auto want = unmatched_groups(sgroups, *got_groups);
  auto which = decode_indices(encode_indices(want), got_groups->size());
  EXPECT_TRUE(which);
  const std::string chunks_wire = encode_chunks(bchunks, bgroups, *which);
  auto got_chunks = decode_chunks(chunks_wire, *got_groups, want);
  EXPECT_TRUE(got_chunks);
  return {plan_ops(schunks, sgroups, *got_groups, *got_chunks), groups_wire.size() + chunks_wire.size()};
}

// The same for a download: the receiver (holding the basis) reads the
// sender's groups, asks for the chunks of those it lacks, and plans copies
// from its basis and ranges of the sender's file.
exchange fetch_between(const std::string& basis, const std::string& source, params p) {
  const auto bchunks = chunks_of(basis, p);
  const auto bgroups = group_chunks(bchunks);
  const auto schunks = chunks_of(source, p);
  const auto sgroups = group_chunks(schunks);
  const std::string groups_wire = encode_groups(sgroups);
  auto got_groups = decode_groups(groups_wire, source.size());
  EXPECT_TRUE(got_groups);
  const auto want = unmatched_groups(bgroups, *got_groups);
  const std::string chunks_wire = encode_chunks(schunks, sgroups, want);
  auto got_chunks = decode_chunks(chunks_wire, *got_groups, want);
  EXPECT_TRUE(got_chunks);
  return {plan_fetch(*got_groups, want, *got_chunks, bchunks, bgroups), groups_wire.size() + chunks_wire.size()};
}

std::uint64_t literal_bytes(const std::vector<op>& ops) {
  std::uint64_t n = 0;
  for (const auto& o : ops) n += o.what == op::literal ? o.length : 0;
  return n;
}

}  // namespace

TEST(DeltaParams, ScaleWithTheFile) {
  EXPECT_EQ(params_for(0).avg, 16u << 10);
  EXPECT_EQ(params_for(100).avg, 16u << 10);
  EXPECT_EQ(params_for(1ull << 30).avg, 16u << 10);
  EXPECT_EQ(params_for((1ull << 30) + 1).avg, 32u << 10);
  EXPECT_EQ(params_for(64ull << 30).avg, 1u << 20);
  EXPECT_EQ(params_for(~0ull).avg, 4u << 20);
  const params p = params_for(1ull << 30);
  EXPECT_EQ(p.min, p.avg / 4);
  EXPECT_EQ(p.max, p.avg * 4);
}

TEST(DeltaChunker, CutsTheSameWhateverThePieces) {
  const params p = params_with(12);
  const std::string data = random_bytes(1 << 20, 1);
  const auto whole = chunks_of(data, p);
  for (std::size_t piece : {1u, 7u, 4096u, 65537u}) {
    const auto pieces = chunks_of(data, p, piece);
    ASSERT_EQ(pieces.size(), whole.size()) << piece;
    for (std::size_t i = 0; i < whole.size(); ++i) {
      EXPECT_EQ(pieces[i].offset, whole[i].offset);
      EXPECT_EQ(pieces[i].length, whole[i].length);
      EXPECT_EQ(pieces[i].hash, whole[i].hash);
    }
  }
}

TEST(DeltaChunker, ChunksCoverTheFileWithinTheirBounds) {
  const params p = params_with(12);
  const std::string data = random_bytes(4 << 20, 2);
  const auto chunks = chunks_of(data, p);
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].offset, at);
    if (i + 1 < chunks.size()) {
      EXPECT_GE(chunks[i].length, p.min);
    }
    EXPECT_LE(chunks[i].length, p.max);
    at += chunks[i].length;
  }
  EXPECT_EQ(at, data.size());
  const double average = static_cast<double>(data.size()) / static_cast<double>(chunks.size());
  EXPECT_GT(average, p.avg * 0.75);
  EXPECT_LT(average, p.avg * 1.5);
  // Nothing to cut in: constant bytes get max-size chunks, all alike.
  const auto zeros = chunks_of(std::string(1 << 20, '\0'), p);
  for (std::size_t i = 0; i + 1 < zeros.size(); ++i) EXPECT_EQ(zeros[i].length, p.max);
  EXPECT_TRUE(chunks_of("", p).empty());
  ASSERT_EQ(chunks_of("abc", p).size(), 1u);
}

TEST(DeltaChunker, AnInsertionMovesOnlyTheChunksAroundIt) {
  const params p = params_with(12);
  const std::string a = random_bytes(2 << 20, 3);
  std::string b = a;
  b.insert(1 << 20, "inserted bytes");
  const auto ca = chunks_of(a, p), cb = chunks_of(b, p);
  std::size_t same = 0;
  std::vector<std::uint64_t> hashes;
  for (const auto& c : ca) hashes.push_back(c.hash);
  std::sort(hashes.begin(), hashes.end());
  for (const auto& c : cb) same += std::binary_search(hashes.begin(), hashes.end(), c.hash);
  EXPECT_GE(same + 3, cb.size());
}

TEST(DeltaPlan, AppendSendsOnlyTheNewTail) {
  const params p = params_with(12);
  const std::string basis = random_bytes(8 << 20, 4);
  const std::string source = basis + random_bytes(256 << 10, 5);
  const auto x = delta_between(basis, source, p);
  EXPECT_EQ(rebuild(x.ops, basis, source), source);
  EXPECT_LE(literal_bytes(x.ops), (256u << 10) + p.max);
  EXPECT_GE(copied_bytes(x.ops), basis.size() - p.max);
  // The signature: a record per group, and the chunks of the one group
  // the append changed (far below one record per chunk).
  EXPECT_LT(x.signature_bytes, basis.size() / p.avg * chunk_record / 4);
}

TEST(DeltaPlan, ChangeInTheMiddleSendsAboutTheChange) {
  const params p = params_with(12);
  const std::string basis = random_bytes(8 << 20, 6);
  std::string source = basis;
  source.replace(4 << 20, 256 << 10, random_bytes(256 << 10, 7));
  const auto x = delta_between(basis, source, p);
  EXPECT_EQ(rebuild(x.ops, basis, source), source);
  EXPECT_LE(literal_bytes(x.ops), (256u << 10) + 2 * p.max);
}

TEST(DeltaPlan, InsertionsDeletionsAndStrangers) {
  const params p = params_with(12);
  const std::string basis = random_bytes(4 << 20, 8);
  std::string inserted = basis, deleted = basis;
  inserted.insert(123457, random_bytes(5000, 9));
  deleted.erase(2000000, 100000);
  for (const std::string* source : {&inserted, &deleted}) {
    const auto x = delta_between(basis, *source, p);
    EXPECT_EQ(rebuild(x.ops, basis, *source), *source);
    EXPECT_LE(literal_bytes(x.ops), 100000u + 2 * p.max);
  }
  const std::string other = random_bytes(1 << 20, 10);  // nothing in common
  const auto x = delta_between(basis, other, p);
  EXPECT_EQ(rebuild(x.ops, basis, other), other);
  EXPECT_EQ(copied_bytes(x.ops), 0u);
  const auto empty = delta_between(basis, "", p);
  EXPECT_TRUE(empty.ops.empty());
}

TEST(DeltaPlan, GroupsAsChunksComeAreTheSame) {
  const params p = params_with(12);
  const auto all = chunks_of(random_bytes(8 << 20, 13), p);
  std::vector<chunk> so_far;
  std::vector<group> groups;
  grouper g;
  for (std::size_t i = 0; i < all.size(); i += 37) {
    so_far.insert(so_far.end(), all.begin() + static_cast<long>(i), all.begin() + static_cast<long>(std::min(i + 37, all.size())));
    g.add(so_far, groups);
  }
  g.finish(so_far, groups);
  const auto at_once = group_chunks(all);
  ASSERT_EQ(groups.size(), at_once.size());
  for (std::size_t i = 0; i < groups.size(); ++i) {
    EXPECT_EQ(groups[i].hash, at_once[i].hash);
    EXPECT_EQ(groups[i].bytes, at_once[i].bytes);
    EXPECT_EQ(groups[i].first, at_once[i].first);
  }
  EXPECT_GT(groups.size(), 4u);
}

TEST(DeltaFetch, RebuildsTheSendersFileFromTheBasis) {
  const params p = params_with(12);
  const std::string basis = random_bytes(8 << 20, 21);
  std::string middle = basis;
  middle.replace(4 << 20, 256 << 10, random_bytes(256 << 10, 22));
  std::string inserted = basis;
  inserted.insert(777777, random_bytes(3000, 23));
  const std::string appended = basis + random_bytes(256 << 10, 24);
  const std::string shorter = basis.substr(0, 5 << 20);
  for (const std::string* source : std::initializer_list<const std::string*>{&middle, &inserted, &appended, &shorter}) {
    const auto x = fetch_between(basis, *source, p);
    EXPECT_EQ(rebuild(x.ops, basis, *source), *source);
    EXPECT_LE(literal_bytes(x.ops), (256u << 10) + 2 * p.max);
    EXPECT_LT(x.signature_bytes, source->size() / p.avg * chunk_record / 4);
  }
  const std::string stranger = random_bytes(1 << 20, 25);
  const auto x = fetch_between(basis, stranger, p);
  EXPECT_EQ(rebuild(x.ops, basis, stranger), stranger);
  EXPECT_EQ(copied_bytes(x.ops), 0u);
  EXPECT_TRUE(fetch_between(basis, "", p).ops.empty());
}

TEST(DeltaFetch, GroupsNotAskedForAreFetchedWhole) {
  // A receiver may ask for no chunk lists at all: what its basis lacks
  // is then fetched group by group.
  const params p = params_with(12);
  const std::string basis = random_bytes(4 << 20, 26);
  std::string source = basis;
  source.replace(1 << 20, 1000, random_bytes(1000, 27));
  const auto bchunks = chunks_of(basis, p);
  const auto schunks = chunks_of(source, p);
  const auto sgroups = group_chunks(schunks);
  const auto ops = plan_fetch(sgroups, {}, {}, bchunks, group_chunks(bchunks));
  EXPECT_EQ(rebuild(ops, basis, source), source);
  EXPECT_GT(literal_bytes(ops), 1000u);
  EXPECT_GT(copied_bytes(ops), 2u << 20);
}

TEST(DeltaWire, RangesAreCheckedAgainstTheFile) {
  const std::vector<range> rs = {{0, 10}, {10, 5}, {100, 900}};
  const std::string wire = encode_ranges(rs);
  EXPECT_EQ(wire.size(), 3 * range_record);
  EXPECT_EQ(decode_ranges(wire, 1000), rs);
  EXPECT_TRUE(decode_ranges("", 0));
  EXPECT_FALSE(decode_ranges(wire, 999));                                      // past the end
  EXPECT_FALSE(decode_ranges(encode_ranges({{5, 10}, {10, 1}}), 1000));        // overlapping
  EXPECT_FALSE(decode_ranges(encode_ranges({{50, 1}, {10, 1}}), 1000));        // backwards
  EXPECT_FALSE(decode_ranges(encode_ranges({{1, 0}}), 1000));                  // empty
  EXPECT_FALSE(decode_ranges(encode_ranges({{1, ~std::uint64_t{0}}}), 1000));  // no overflow
  EXPECT_FALSE(decode_ranges(wire.substr(1), 1000));
}

TEST(DeltaWire, MalformedRecordsAreRefused) {
  const params p = params_with(12);
  const std::string basis = random_bytes(1 << 20, 11);
  const auto chunks = chunks_of(basis, p);
  const auto groups = group_chunks(chunks);
  const std::string wire = encode_groups(groups);
  EXPECT_TRUE(decode_groups(wire, basis.size()));
  EXPECT_FALSE(decode_groups(wire, basis.size() + 1));  // does not add up
  EXPECT_FALSE(decode_groups(wire, basis.size() - 1));
  EXPECT_FALSE(decode_groups(wire.substr(1), basis.size()));
  EXPECT_FALSE(decode_groups(std::string(16, '\0'), 0));  // an empty group
  std::string huge = wire;
  for (int i = 0; i < 8; ++i) huge[static_cast<std::size_t>(i)] = '\xff';  // 2^64-1 bytes: no overflow
  EXPECT_FALSE(decode_groups(huge, basis.size()));

  const std::vector<std::uint32_t> which = {0, static_cast<std::uint32_t>(groups.size() - 1)};
  const std::string cw = encode_chunks(chunks, groups, which);
  auto back = decode_chunks(cw, groups, which);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->size(), groups.front().count + groups.back().count);
  EXPECT_EQ(back->back().offset + back->back().length, basis.size());
  EXPECT_FALSE(decode_chunks(cw.substr(0, cw.size() - chunk_record), groups, which));  // too few
  EXPECT_FALSE(decode_chunks(cw + cw.substr(0, chunk_record), groups, which));          // too many
  EXPECT_FALSE(decode_chunks(cw, groups, {static_cast<std::uint32_t>(groups.size())}));

  EXPECT_TRUE(decode_indices(encode_indices({0, 2, 5}), 6));
  EXPECT_FALSE(decode_indices(encode_indices({0, 2, 6}), 6));   // out of range
  EXPECT_FALSE(decode_indices(encode_indices({2, 2}), 6));      // repeated: a reply could be made huge
  EXPECT_FALSE(decode_indices(encode_indices({3, 1}), 6));
  EXPECT_FALSE(decode_indices("abc", 6));
}

TEST(DeltaChunker, ChunkFileReadsLikeMemory) {
  char name[] = "/tmp/cskit-delta-XXXXXX";
  const int fd = ::mkstemp(name);
  ASSERT_GE(fd, 0);
  ::unlink(name);
  const std::string data = random_bytes(3 << 20, 12);
  ASSERT_EQ(write_all(fd, data.data(), data.size()), 0);
  const params p = params_with(12);
  std::vector<chunk> from_file;
  std::string seen;
  int calls = 0, done_calls = 0;
  reading r;
  r.observe = [&](std::string_view bytes) { seen += bytes; };
  r.progress = [&](bool done) {
    ++calls;
    done_calls += done;
    return true;
  };
  ASSERT_TRUE(chunk_file(fd, data.size(), p, from_file, r));
  EXPECT_EQ(seen, data);
  EXPECT_EQ(calls, 1);  // one block of 8 MiB
  EXPECT_EQ(done_calls, 1);
  const auto in_memory = chunks_of(data, p);
  ASSERT_EQ(from_file.size(), in_memory.size());
  EXPECT_EQ(from_file.back().hash, in_memory.back().hash);
  std::vector<chunk> more;
  EXPECT_FALSE(chunk_file(fd, data.size() + 1, p, more));  // shorter than it was said to be
  r.progress = [](bool) { return false; };
  EXPECT_FALSE(chunk_file(fd, data.size(), p, more, r));
  ::close(fd);
}
