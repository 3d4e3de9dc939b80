// Packed listings (fs.list with "packed"): round trip, size, hostile bodies.
#include "proto/listing.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace cskit::proto;

namespace {

json sample() {
  json a = json::array();
  a.push_back({{"name", "d00"}, {"type", "dir"}, {"size", 0}, {"mode", 493}, {"mtime_ns", 1795000000123456789LL}});
  a.push_back({{"name", "d00/f00000"}, {"type", "file"}, {"size", 4096}, {"mode", 420}, {"mtime_ns", 1795000000000000000LL}});
  a.push_back({{"name", "d00/f00100"}, {"type", "file"}, {"size", 4096}, {"mode", 420}, {"mtime_ns", 1795000000000100000LL},
               {"xxh3", "6bba86c7e069f56d5a10b435f1c8e49c"}});
  a.push_back({{"name", "d00/报告.pdf"}, {"type", "file"}, {"size", 1ULL << 40}, {"mode", 384}, {"mtime_ns", -5}});
  a.push_back({{"name", "link"}, {"type", "symlink"}, {"size", 0}, {"mode", 511}, {"mtime_ns", INT64_MAX},
               {"target", "d00/f00000"}});
  a.push_back({{"name", "fifo"}, {"type", "other"}, {"size", 0}, {"mode", 420}, {"mtime_ns", INT64_MIN}});
  a.push_back({{"name", "fifo"}, {"type", "file"}, {"size", 0}, {"mode", 420}, {"mtime_ns", 0}});  // same name again
  return a;
}

}  // namespace

TEST(PackedListing, RoundTrip) {
  const json a = sample();
  auto back = unpack_entries(pack_entries(a));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, a);
  auto none = unpack_entries(pack_entries(json::array()));
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(PackedListing, ATreeOfSmallFilesIsAFractionOfItsJson) {
  json a = json::array();
  std::int64_t t = 1795000000000000000LL;
  for (int d = 0; d < 10; ++d) {
    const std::string dir = "d0" + std::to_string(d);
    a.push_back({{"name", dir}, {"type", "dir"}, {"size", 0}, {"mode", 493}, {"mtime_ns", t}});
    for (int f = 0; f < 100; ++f) {
      char name[32];
      std::snprintf(name, sizeof name, "%s/f%05d", dir.c_str(), f * 10 + d);
      t += 123456789;
      a.push_back({{"name", name}, {"type", "file"}, {"size", 4096}, {"mode", 420}, {"mtime_ns", t}});
    }
  }
  const std::string packed = pack_entries(a);
  EXPECT_LT(packed.size() * 6, a.dump().size());
  EXPECT_LT(packed.size(), 14u * a.size());
  EXPECT_EQ(*unpack_entries(packed), a);
}

TEST(PackedListing, MalformedBodiesAreRefused) {
  const std::string good = pack_entries(sample());
  // Cut anywhere: refused or a shorter list, never a crash or a read past the end.
  for (std::size_t n = 0; n < good.size(); ++n) {
    auto got = unpack_entries(std::string_view(good).substr(0, n));
    if (got) {
      EXPECT_LT(got->size(), sample().size());
    }
  }
  auto bad = [](std::string body) { return !unpack_entries(body).has_value(); };
  EXPECT_TRUE(bad(std::string("\x20\x00\x01" "a\x00\x00\x00", 7)));        // unknown flag bit
  EXPECT_TRUE(bad(std::string("\x00\x05\x01" "a\x00\x00\x00", 7)));        // shares more than there is
  EXPECT_TRUE(bad(std::string("\x04\x00\x01" "a\x00\x00", 6)));            // "same mode" with no mode before
  EXPECT_TRUE(bad(std::string("\x00\x00\x01\xff\x00\x00\x00", 7)));        // not UTF-8
  EXPECT_TRUE(bad(std::string("\x00\x00\x81\x40", 4) + std::string(5000, 'x')));  // a name over 4096 bytes
  EXPECT_TRUE(bad(std::string("\x00\x00\x01" "a", 4) + std::string(11, '\xff')));  // a varint past 64 bits
  EXPECT_TRUE(bad(std::string("\x08\x00\x01" "a\x00\x00\x00" "short", 12)));      // a digest cut short
  EXPECT_TRUE(bad(std::string("\x10\x00\x01" "a\x00\x00\x00\x05" "ab", 10)));     // a target cut short
}
